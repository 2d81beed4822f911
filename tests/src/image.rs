//! The tiny container image the Docker and podman tests run, made offline from Debian's static
//! busybox (no registry pulls): /bin with every applet, and /www/index.html for busybox httpd.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Page busybox httpd serves from /www in the image.
pub const INDEX: &str = "hello from netloom\n";

/// Builds the image's root filesystem as a tar file under `dir` and returns its path; the caller
/// imports it (`docker import`, `podman import`) and removes it.
pub fn busybox_rootfs_tar(dir: &Path) -> Result<PathBuf, String> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("busybox is not installed (apt-get install busybox-static)")?;
    let rootfs = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "www"] {
        std::fs::create_dir_all(rootfs.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::copy(&busybox, rootfs.join("bin/busybox"))
        .map_err(|e| format!("copy busybox: {e}"))?;
    let list = Command::new(&busybox)
        .arg("--list")
        .output()
        .map_err(|e| e.to_string())?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.contains('/') {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
    }
    std::fs::write(rootfs.join("www/index.html"), INDEX).map_err(|e| e.to_string())?;
    let tar = dir.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .map_err(|e| format!("tar: {e}"))?;
    let _ = std::fs::remove_dir_all(&rootfs);
    if !st.success() {
        return Err("tar of the rootfs failed".into());
    }
    Ok(tar)
}
