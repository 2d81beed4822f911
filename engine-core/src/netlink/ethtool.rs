//! The one ethtool setting netloom changes: transmit checksum offload, through the
//! `SIOCETHTOOL` ioctl (no `ethtool` binary).
//!
//! Why: on kernels before 5.7, VXLAN packets whose UDP checksum the device leaves to offload
//! get a wrong checksum when they are NATed on the way out (kube-proxy's `--random-fully`
//! masquerade and similar), and the receiver drops them until TCP retransmits with another
//! source port — the 63-second connection delays of flannel#1279 and calico#3145. Turning off
//! tx checksum offload on the VXLAN device makes the kernel compute the checksum in software
//! before NAT. Newer kernels do not need it, and it costs throughput (segmentation offload
//! depends on it), so callers decide with [`needs_tx_checksum_workaround`].

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{Error, Result};
use crate::netns::Netns;

/// `SIOCETHTOOL` (linux/sockios.h).
const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// linux/ethtool.h: get / set transmit checksum offload.
const ETHTOOL_GTXCSUM: u32 = 0x0000_0016;
const ETHTOOL_STXCSUM: u32 = 0x0000_0017;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of the union (padded to the union's 24 bytes).
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// Whether transmit checksum offload is on for `ifname` in `netns` (None: the caller's own).
pub fn tx_checksum(netns: Option<&Netns>, ifname: &str) -> Result<bool> {
    let v = ethtool_in(netns, ifname, ETHTOOL_GTXCSUM, 0)?;
    Ok(v != 0)
}

/// Turns transmit checksum offload on `ifname` on or off.
pub fn set_tx_checksum(netns: Option<&Netns>, ifname: &str, on: bool) -> Result<()> {
    ethtool_in(netns, ifname, ETHTOOL_STXCSUM, u32::from(on)).map(|_| ())
}

/// Whether this kernel has the VXLAN checksum-after-NAT bug: releases before 5.7, where the
/// fix ("netfilter: nat: never update the UDP checksum when it's 0") landed in mainline.
/// Calico draws the same line (felix#2811, and calico#8746 turned offload back on above it).
/// Vendor kernels that backported the fix are still treated as affected: the workaround only
/// costs throughput there, while missing it costs 63-second stalls. A release that cannot be
/// read or parsed errs on the same side.
pub fn needs_tx_checksum_workaround() -> bool {
    match nix::sys::utsname::uname() {
        Ok(u) => release_needs_workaround(&u.release().to_string_lossy()),
        Err(_) => true,
    }
}

/// The decision for one kernel release string (`uname -r`, e.g. "6.1.0-18-amd64").
pub fn release_needs_workaround(release: &str) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|s| s.parse::<u32>().ok());
    let minor = parts.next().and_then(|s| s.parse::<u32>().ok());
    match (major, minor) {
        (Some(major), Some(minor)) => (major, minor) < (5, 7),
        _ => true,
    }
}

fn ethtool_in(netns: Option<&Netns>, ifname: &str, cmd: u32, data: u32) -> Result<u32> {
    let name = ifname.to_string();
    match netns {
        // The socket decides which namespace's device the ioctl names, so it is created inside.
        Some(ns) => ns.run(move || ethtool(&name, cmd, data))?,
        None => ethtool(&name, cmd, data),
    }
}

fn ethtool(ifname: &str, cmd: u32, data: u32) -> Result<u32> {
    let what = || format!("ethtool command {cmd:#x} on {ifname}");
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(Error::InvalidConfig(format!(
            "interface name {ifname:?} is not valid"
        )));
    }
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::io(what(), std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: (&mut value as *mut EthtoolValue).cast(),
        _pad: [0; 16],
    };
    for (d, s) in req.name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: req is a properly laid out ifreq whose ifr_data points at `value`, which outlives
    // the call; the kernel reads/writes only sizeof(ethtool_value) bytes through it.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::Kernel {
            context: what(),
            source: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        });
    }
    Ok(value.data)
}

#[cfg(test)]
mod tests {
    use super::release_needs_workaround as needs;

    #[test]
    fn kernel_release_decides_the_workaround() {
        assert!(needs("4.18.0-348.el8.x86_64"));
        assert!(needs("5.4.0-150-generic"));
        assert!(needs("5.6.19"));
        assert!(!needs("5.7.0"));
        assert!(!needs("5.10.0-28-amd64"));
        assert!(!needs("6.18.44-fc-v445"));
        // Unreadable: the safe side.
        assert!(needs(""));
        assert!(needs("linux"));
        // This machine's release parses either way.
        let _ = super::needs_tx_checksum_workaround();
    }
}
