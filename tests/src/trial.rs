//! Test registration and the main function of the integration binary (libtest-mimic).

use libtest_mimic::{Arguments, Failed, Trial};

use crate::caps::{Cap, Caps};

type TestFn = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// The tests of one integration binary.
#[derive(Default)]
pub struct Suite {
    tests: Vec<(String, Vec<Cap>, TestFn)>,
    workers: Vec<(String, fn() -> i32)>,
}

impl Suite {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a test that needs `caps`.
    pub fn test<F>(&mut self, name: &str, caps: &[Cap], f: F) -> &mut Self
    where
        F: FnOnce() -> Result<(), String> + Send + 'static,
    {
        self.tests
            .push((name.to_string(), caps.to_vec(), Box::new(f)));
        self
    }

    /// Registers a worker: when the binary is started with `NETLOOM_TEST_WORKER=<name>` it runs
    /// that function instead of the tests and exits with its status (used to test behaviour
    /// across processes, and kill -9 in the middle of an operation).
    pub fn worker(&mut self, name: &str, f: fn() -> i32) -> &mut Self {
        self.workers.push((name.to_string(), f));
        self
    }
}

/// Whether missing capabilities fail tests (CI) instead of skipping them.
pub fn strict() -> bool {
    std::env::var("NETLOOM_TEST_STRICT")
        .map(|v| v == "1" || v == "true")
        .unwrap_or(false)
}

/// Runs the suite: workers, probes, trials, then the leak sweep. Never returns.
pub fn run_main(suite: Suite) -> ! {
    if let Ok(w) = std::env::var("NETLOOM_TEST_WORKER") {
        let code = match suite.workers.iter().find(|(n, _)| *n == w) {
            Some((_, f)) => f(),
            None => {
                eprintln!("unknown test worker {w:?}");
                2
            }
        };
        std::process::exit(code);
    }
    let args = Arguments::from_args();
    let listing = args.list;
    let caps = Caps::get();
    let strict = strict();
    if !listing {
        eprintln!("capabilities: {}", caps.summary());
    }
    let mut trials = Vec::new();
    let mut skipped = Vec::new();
    for (name, needs, f) in suite.tests {
        let missing: Vec<String> = needs
            .iter()
            .filter_map(|c| caps.missing(*c).map(|why| (c, why)))
            .map(|(c, why)| format!("{c:?} ({why})"))
            .collect();
        let must_have = needs
            .iter()
            .any(|c| caps.missing(*c).is_some() && c.expected_in_ci());
        if missing.is_empty() {
            trials.push(Trial::test(name, move || f().map_err(Failed::from)));
        } else if strict && must_have {
            let msg = format!(
                "NETLOOM_TEST_STRICT=1 and this machine lacks {}",
                missing.join(", ")
            );
            trials.push(Trial::test(name, move || Err(Failed::from(msg))));
        } else {
            let msg = format!("skipped: needs {}", missing.join(", "));
            skipped.push(format!("{name}: {msg}"));
            trials.push(Trial::test(name, move || Err(Failed::from(msg))).with_ignored_flag(true));
        }
    }
    if !listing {
        for s in &skipped {
            eprintln!("SKIP {s}");
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if listing {
        std::process::exit(0);
    }
    let leaks = crate::sweep::leftovers();
    if !leaks.is_empty() {
        eprintln!("LEAK CHECK FAILED: this run left behind:");
        for l in &leaks {
            eprintln!("  {l}");
        }
        std::process::exit(101);
    }
    conclusion.exit()
}
