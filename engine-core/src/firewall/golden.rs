//! Golden-file comparison for the rendered rulesets (tests only).
//!
//! `NETLOOM_UPDATE_GOLDEN=1 cargo test -p engine-core firewall` rewrites the files; review the
//! diff like any other change.

use std::path::PathBuf;

pub fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/firewall/testdata")
        .join(name);
    if std::env::var("NETLOOM_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "read {} ({e}); run with NETLOOM_UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if want != actual {
        panic!(
            "{} differs from the rendered ruleset (NETLOOM_UPDATE_GOLDEN=1 to accept):\n--- want\n{want}\n--- got\n{actual}",
            path.display()
        );
    }
}
