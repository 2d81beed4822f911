//! The final sweep: anything this run made that is still there is a leak, and fails the run.

use std::process::Command;

use crate::names::run_prefix;

/// Finds (and then removes, so the machine stays usable) every leftover of this run:
/// namespaces under /run/netns, links in the root namespace, nft tables, state directories.
/// Returns a description of each leftover.
pub fn leftovers() -> Vec<String> {
    let prefix = run_prefix();
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(engine_core::netns::NETNS_RUN_DIR) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                found.push(format!("network namespace /run/netns/{name}"));
                let _ = engine_core::netns::Netns::remove_named(
                    std::path::Path::new("/run/netns"),
                    &name,
                );
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line
                .split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n))
            {
                if name.starts_with("nlt") {
                    found.push(format!("link {name} in the root namespace"));
                    let _ = Command::new("ip").args(["link", "del", name]).status();
                }
            }
        }
    }
    if let Ok(out) = Command::new("nft").args(["list", "tables"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.contains(&prefix) {
                found.push(format!("nft {line} in the root namespace"));
            }
        }
    }
    // host-local's default lease directory, which netloom-ipam mirrors.
    if let Ok(entries) = std::fs::read_dir("/var/lib/cni/networks") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                found.push(format!("host-local lease directory {}", e.path().display()));
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                found.push(format!("directory {}", e.path().display()));
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    found
}
