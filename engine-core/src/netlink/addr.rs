//! Interface addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use rtnetlink::AddressMessageBuilder;

use super::{LinkRef, Netlink, Scope};
use crate::error::Result;

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    /// The address with its prefix length (`10.0.0.2/24`).
    pub address: IpNetwork,
    pub label: Option<String>,
    pub scope: Scope,
    /// Configured, not learned (SLAAC) — `IFA_F_PERMANENT`.
    pub permanent: bool,
    /// IPv6 duplicate address detection still running; the address cannot be used yet.
    pub tentative: bool,
    pub dad_failed: bool,
    pub nodad: bool,
}

/// Options for [`Netlink::add_address`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddrOptions {
    /// IPv6: skip duplicate address detection, so the address is usable at once (containers
    /// get unique addresses from IPAM; waiting for DAD only delays them).
    pub nodad: bool,
    /// Do not add the prefix route the kernel normally adds for the subnet.
    pub noprefixroute: bool,
    /// Update the address if it exists instead of failing with `EEXIST`.
    pub replace: bool,
}

impl Netlink {
    /// Adds `address` (host address and prefix length, like `10.0.0.2/24`) to a link.
    pub fn add_address(
        &self,
        link: impl Into<LinkRef>,
        address: IpNetwork,
        opts: AddrOptions,
    ) -> Result<()> {
        let link = link.into();
        let index = self.link_index(&link)?;
        let mut m = address_message(index, address);
        let mut flags = AddressFlags::empty();
        if opts.nodad && address.is_ipv6() {
            flags |= AddressFlags::Nodad;
            m.header.flags |= AddressHeaderFlags::Nodad;
        }
        if opts.noprefixroute {
            flags |= AddressFlags::Noprefixroute;
        }
        if !flags.is_empty() {
            m.attributes.push(AddressAttribute::Flags(flags));
        }
        let mode = if opts.replace {
            NLM_F_REPLACE
        } else {
            NLM_F_EXCL
        };
        self.exec(
            &|| format!("add address {address} to {link}"),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | mode,
        )
    }

    /// Removes an address from a link; returns whether it was there. A missing address or link
    /// is success.
    pub fn del_address(&self, link: impl Into<LinkRef>, address: IpNetwork) -> Result<bool> {
        let link = link.into();
        let index = match self.link(&link)? {
            Some(l) => l.index,
            None => return Ok(false),
        };
        let m = address_message(index, address);
        match self.exec(
            &|| format!("delete address {address} from {link}"),
            RouteNetlinkMessage::DelAddress(m),
            0,
        ) {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(
                    e.errno(),
                    Some(libc::EADDRNOTAVAIL | libc::ENODEV | libc::ENOENT)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// All addresses in the namespace (IPv4 and IPv6).
    pub fn addresses(&self) -> Result<Vec<Address>> {
        self.dump_addresses(None)
    }

    /// The addresses of one link.
    pub fn addresses_of(&self, link: impl Into<LinkRef>) -> Result<Vec<Address>> {
        let index = self.link_index(link)?;
        self.dump_addresses(Some(index))
    }

    fn dump_addresses(&self, index: Option<u32>) -> Result<Vec<Address>> {
        let what = || match index {
            Some(i) => format!("list addresses of ifindex {i}"),
            None => "list addresses".to_string(),
        };
        let msgs = self.dump(&what, &|| {
            let mut m = AddressMessage::default();
            // Honoured as a filter when strict checking is on; we filter again below.
            m.header.index = index.unwrap_or(0);
            RouteNetlinkMessage::GetAddress(m)
        })?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(m) => parse_address(m),
                _ => None,
            })
            .filter(|a| index.is_none_or(|i| a.index == i))
            .collect())
    }
}

fn address_message(index: u32, address: IpNetwork) -> AddressMessage {
    // rtnetlink's builder fills IFA_LOCAL/IFA_ADDRESS (and IPv4's broadcast) the way iproute2 does.
    match address.ip() {
        IpAddr::V4(ip) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(ip, address.prefix())
            .build(),
        IpAddr::V6(ip) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(index)
            .address(ip, address.prefix())
            .build(),
    }
}

fn parse_address(m: AddressMessage) -> Option<Address> {
    if !matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6) {
        return None;
    }
    let mut local = None;
    let mut addr = None;
    let mut label = None;
    let mut flags = AddressFlags::from_bits_retain(u32::from(m.header.flags.bits()));
    for a in m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(ip),
            AddressAttribute::Address(ip) => addr = Some(ip),
            AddressAttribute::Label(l) => label = Some(l),
            // The 32-bit attribute supersedes the 8 bits in the header.
            AddressAttribute::Flags(f) => flags = f,
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point
    // links and the same address otherwise (IPv6 usually sends only IFA_ADDRESS).
    let ip = local.or(addr)?;
    Some(Address {
        index: m.header.index,
        address: IpNetwork::new(ip, m.header.prefix_len).ok()?,
        label,
        scope: u8::from(m.header.scope).into(),
        permanent: flags.contains(AddressFlags::Permanent),
        tentative: flags.contains(AddressFlags::Tentative),
        dad_failed: flags.contains(AddressFlags::Dadfailed),
        nodad: flags.contains(AddressFlags::Nodad),
    })
}
