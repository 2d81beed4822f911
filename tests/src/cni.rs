//! Running CNI plugins exactly as a runtime does: a subprocess in the (fake) host namespace with
//! the CNI_* environment and the configuration on stdin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;

use crate::FakeHost;

/// Where this build's binaries are (target/debug or target/release, next to the test binary).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The path of one of our binaries; an error says how to build it.
pub fn our_bin(name: &str) -> Result<PathBuf, String> {
    let p = bin_dir().join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} is missing: run `cargo build --workspace` first (./test.sh does)",
            p.display()
        ))
    }
}

/// One plugin call's outcome.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// The stdout as JSON (Null when empty).
    pub fn json(&self) -> Result<Value, String> {
        if self.stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&self.stdout)
            .map_err(|e| format!("stdout is not JSON ({e}): {}", self.stdout))
    }

    /// Fails unless the call succeeded; returns the JSON.
    pub fn ok(&self) -> Result<Value, String> {
        if self.code != 0 {
            return Err(format!(
                "plugin failed (exit {}): {} {}",
                self.code, self.stdout, self.stderr
            ));
        }
        self.json()
    }

    /// Fails unless the call failed with `code`; returns the error message.
    pub fn err_code(&self, code: u64) -> Result<String, String> {
        let v = self.json()?;
        if self.code == 0 || v["code"].as_u64() != Some(code) {
            return Err(format!(
                "want error code {code}, got exit {} with {}",
                self.code, self.stdout
            ));
        }
        Ok(v["msg"].as_str().unwrap_or_default().to_string())
    }
}

/// The CNI_* variables of one call.
#[derive(Debug, Clone, Default)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub args: &'a str,
}

/// Runs `plugin` inside `host` with `call`'s environment and `config` on stdin.
pub fn run(
    host: &FakeHost,
    plugin: &Path,
    call: &Call<'_>,
    config: &Value,
) -> Result<Outcome, String> {
    let mut cmd = host.command(plugin)?;
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env(
            "CNI_NETNS",
            call.netns
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_ARGS", call.args)
        .env(
            "CNI_PATH",
            bin_dir().to_string_lossy().into_owned() + ":/usr/lib/cni",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", plugin.display()))?;
    let body = serde_json::to_vec(config).map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&body)
            .map_err(|e| format!("write stdin: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    Ok(Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Merges the keys of `extra` (an object) into `base`, replacing what is there.
pub fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
}

/// How many values a state store directory (or part of it) holds: its `%v` files.
pub fn count_values(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == "%v") {
                1
            } else if p.is_dir() {
                count_values(&p)
            } else {
                0
            }
        })
        .sum()
}
