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

/// Whether this kernel has the VXLAN checksum-after-NAT bug (before 5.7; the fix, "netfilter:
/// nat: never update the UDP checksum when it's 0", was also backported, so this errs on the
/// safe side for old stable kernels).
pub fn needs_tx_checksum_workaround() -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return true;
    };
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) < (5, 7)
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
    #[test]
    fn kernel_version_check_runs() {
        // Only that it parses this machine's release without panicking.
        let _ = super::needs_tx_checksum_workaround();
    }
}
