//! TARGET arguments: a netns name, a namespace path, a pid, a Docker container (name or id
//! prefix), a netloom/CNI container id (or prefix), or `host`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::discover::{Discovery, Namespace, Source};
use crate::error::{Error, Result};

/// Finds the namespace `target` names among `found` (paths and pids also work when discovery
/// did not list them). Unknown → [`Error::UnknownTarget`] with the closest known names.
pub fn resolve(target: &str, found: &Discovery) -> Result<Namespace> {
    if target.is_empty() {
        return Err(unknown(target, found));
    }
    if target == "host" {
        if let Some(h) = found.namespaces.iter().find(|n| n.is_host()) {
            return Ok(h.clone());
        }
    }
    if target.contains('/') {
        return by_path(Path::new(target), found, target);
    }
    if target.bytes().all(|b| b.is_ascii_digit()) {
        let path = PathBuf::from(format!("/proc/{target}/ns/net"));
        return by_path(&path, found, target);
    }
    // Exact names first, then unique id prefixes (Docker's rule).
    let exact = |n: &&Namespace| {
        n.sources.iter().any(|s| match s {
            Source::Netns { name, .. } => name == target,
            Source::Docker { id, name } => name == target || id == target,
            Source::Container { id, .. } => id == target,
            _ => false,
        })
    };
    if let Some(n) = found.namespaces.iter().find(exact) {
        return Ok(n.clone());
    }
    let prefixed: Vec<&Namespace> = found
        .namespaces
        .iter()
        .filter(|n| {
            n.sources.iter().any(|s| match s {
                Source::Docker { id, .. } | Source::Container { id, .. } => id.starts_with(target),
                _ => false,
            })
        })
        .collect();
    match prefixed.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(unknown(target, found)),
        many => Err(Error::UnknownTarget {
            target: target.to_string(),
            suggestions: many.iter().map(|n| n.label()).collect(),
        }),
    }
}

fn by_path(path: &Path, found: &Discovery, target: &str) -> Result<Namespace> {
    let ino = match std::fs::metadata(path) {
        Ok(m) => m.ino(),
        Err(_) => return Err(unknown(target, found)),
    };
    if let Some(n) = found.namespaces.iter().find(|n| n.inode == ino) {
        return Ok(n.clone());
    }
    // Not discovered (a pid's own netns that discovery skipped, a mount elsewhere): open it as
    // is; Netns::open checks that it really is a network namespace.
    engine_core::netns::Netns::open(path)?;
    Ok(Namespace {
        inode: ino,
        path: path.to_path_buf(),
        sources: Vec::new(),
    })
}

fn unknown(target: &str, found: &Discovery) -> Error {
    Error::UnknownTarget {
        target: target.to_string(),
        suggestions: suggest(target, found),
    }
}

/// Up to five known names close to `target`: containing it, contained in it, or within a few
/// edits.
pub fn suggest(target: &str, found: &Discovery) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for n in &found.namespaces {
        for s in &n.sources {
            match s {
                Source::Netns { name, .. } => names.push(name.clone()),
                Source::Docker { name, .. } => names.push(name.clone()),
                Source::Container { id, .. } => names.push(id.clone()),
                _ => {}
            }
        }
    }
    names.sort();
    names.dedup();
    let t = target.to_ascii_lowercase();
    let limit = (t.len() / 3).max(2);
    let mut scored: Vec<(usize, String)> = names
        .into_iter()
        .filter_map(|n| {
            let l = n.to_ascii_lowercase();
            let d = edit_distance(&t, &l);
            let related = (t.len() >= 2 && l.contains(&t)) || (l.len() >= 3 && t.contains(&l));
            (d <= limit || related).then_some((d, n))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(5).map(|(_, n)| n).collect()
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake() -> Discovery {
        let ns = |inode, name: &str| Namespace {
            inode,
            path: PathBuf::from(format!("/run/netns/{name}")),
            sources: vec![Source::Netns {
                name: name.into(),
                path: format!("/run/netns/{name}").into(),
            }],
        };
        let mut web = ns(3, "x");
        web.sources = vec![Source::Docker {
            id: "abcdef0123456789".into(),
            name: "web".into(),
        }];
        Discovery {
            namespaces: vec![ns(1, "red"), ns(2, "blue"), web],
            warnings: vec![],
        }
    }

    #[test]
    fn resolves_names_and_id_prefixes() {
        let d = fake();
        assert_eq!(resolve("blue", &d).expect("netns name").inode, 2);
        assert_eq!(resolve("web", &d).expect("docker name").inode, 3);
        assert_eq!(resolve("abcd", &d).expect("docker id prefix").inode, 3);
    }

    #[test]
    fn unknown_targets_get_suggestions_and_exit_2() {
        let e = resolve("bleu", &fake()).expect_err("unknown");
        assert_eq!(e.exit_code(), 2);
        match e {
            Error::UnknownTarget { suggestions, .. } => assert_eq!(suggestions, vec!["blue"]),
            other => panic!("wrong error {other}"),
        }
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
