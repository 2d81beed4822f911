//! nftables over netlink: lowering [`ir`] values to libnftnl messages, sending one atomic batch,
//! and reading the current ruleset back (dumps).
//!
//! libnftnl (through the `nftnl` crate and its `nftnl-sys` bindings) builds and parses the
//! nf_tables messages; `mnl` carries them. The `nftnl` crate covers tables, chains and rules;
//! maps, concatenated interval keys, element comments and several expressions it does not
//! wrap, so those are written here against `nftnl-sys` directly.
//!
//! Every batch carries the ruleset generation the caller read (NFNL_BATCH_GENID): if anyone
//! changed the ruleset since, the kernel refuses the whole batch with ERESTART and the caller
//! re-reads and retries. That makes "check for port conflicts, then add" atomic across
//! concurrent netloom processes without a lock file.

use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::NonNull;

use nftnl::expr::Expression;
use nftnl::nftnl_sys as sys;
use nftnl::{MsgType, NlMsg, ProtoFamily};

use crate::error::{Error, Result};
use crate::firewall::ir::{
    self, Cmp, ElemData, Element, Expr, Family, IpFamily, SetData, Verdict, VmapKey,
};
use crate::netns::Netns;

// ---------------------------------------------------------------- constants not in libc/nftnl

const NFT_REG_VERDICT: u32 = 0;
/// The first 32-bit register; concatenations are laid out from here, one register per 4 bytes.
const REG32_00: u32 = 8;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_CONCAT: u32 = 0x80;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
const NFTNL_SET_DATA_TYPE: u16 = 5;
const NFTNL_SET_DESC_CONCAT: u16 = 16;
const NFTNL_SET_ELEM_USERDATA: u16 = 7;
const NFTNL_SET_ELEM_KEY_END: u16 = 10;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const RTN_LOCAL: u32 = 2;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_STATUS: u32 = 2;
const CT_STATE_ESTABLISHED_RELATED: u32 = (1 << 1) | (1 << 2);
const IPS_DST_NAT: u32 = 1 << 5;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_META_PROTOCOL: u32 = 1;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const NFT_PAYLOAD_LL_HEADER: u32 = 0;
const NFT_PAYLOAD_NETWORK: u32 = 1;
/// The Ethernet source address: 6 bytes after the destination.
const ETHER_SADDR_OFFSET: u32 = 6;
const NFT_LOOKUP_F_INV: u32 = 1;
const NFT_PAYLOAD_TRANSPORT: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_NAT_DNAT: u32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_RETURN: i32 = -5;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_BATCH_GENID: u16 = 1;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
/// Elements per NEWSETELEM message: keeps each message well under the 64 KiB attribute limit.
const ELEMS_PER_MSG: usize = 128;
/// udata type of a comment, for rules and set elements alike.
const UDATA_COMMENT: u8 = 0;
/// udata type of a set's comment.
const UDATA_SET_COMMENT: u8 = 7;
/// udata type of a set's key byte order (nft's `NFTNL_UDATA_SET_KEYBYTEORDER`), and nft's
/// value for host byte order.
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const BYTEORDER_HOST_ENDIAN: u32 = 1;

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidConfig(format!("{s:?} contains a NUL byte")))
}

fn proto_family(f: Family) -> ProtoFamily {
    match f {
        Family::Inet => ProtoFamily::Inet,
        Family::Bridge => ProtoFamily::Bridge,
        Family::Ip => ProtoFamily::Ipv4,
        Family::Ip6 => ProtoFamily::Ipv6,
    }
}

/// userdata TLV with one NUL-terminated string (what nft writes for `comment "…"`).
fn udata_comment(kind: u8, comment: &str) -> Vec<u8> {
    let mut c = comment.as_bytes().to_vec();
    c.truncate(126);
    c.push(0);
    let mut out = vec![kind, c.len() as u8];
    out.extend(c);
    out
}

/// Reads the comment back out of a userdata blob (TLVs of type, length, value).
fn parse_udata_comment(data: &[u8], kind: u8) -> String {
    let mut i = 0;
    while i + 2 <= data.len() {
        let (t, l) = (data[i], data[i + 1] as usize);
        let end = (i + 2 + l).min(data.len());
        if t == kind {
            let v = &data[i + 2..end];
            let v = v.strip_suffix(&[0]).unwrap_or(v);
            return String::from_utf8_lossy(v).into_owned();
        }
        i = end;
    }
    String::new()
}

// ---------------------------------------------------------------- expressions

/// One libnftnl expression, as netloom uses them.
enum Low {
    Meta {
        key: u32,
        dreg: u32,
    },
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Cmp {
        op: u32,
        data: Vec<u8>,
    },
    Bitwise {
        len: u32,
        mask: Vec<u8>,
    },
    Ct {
        key: u32,
    },
    Fib,
    Lookup {
        sreg: u32,
        dreg: Option<u32>,
        set: CString,
        /// Matches when the key is NOT in the set.
        inv: bool,
    },
    Verdict {
        code: i32,
        chain: Option<CString>,
    },
    Counter,
    Nat {
        family: u32,
        addr: u32,
        proto: Option<u32>,
    },
    Masq,
}

impl Expression for Low {
    fn to_expr(&self, _rule: &nftnl::Rule) -> NonNull<sys::nftnl_expr> {
        let name: &CStr = match self {
            Low::Meta { .. } => c"meta",
            Low::Payload { .. } => c"payload",
            Low::Cmp { .. } => c"cmp",
            Low::Bitwise { .. } => c"bitwise",
            Low::Ct { .. } => c"ct",
            Low::Fib => c"fib",
            Low::Lookup { .. } => c"lookup",
            Low::Verdict { .. } => c"immediate",
            Low::Counter => c"counter",
            Low::Nat { .. } => c"nat",
            Low::Masq => c"masq",
        };
        // SAFETY: libnftnl allocates the expression and copies every value we set into it; the
        // pointers passed live for the duration of each call. Allocation failure aborts, as
        // the nftnl crate does for its own expressions.
        unsafe {
            let Some(e) = NonNull::new(sys::nftnl_expr_alloc(name.as_ptr())) else {
                std::process::abort()
            };
            let p = e.as_ptr();
            let set_u32 = |attr: u32, v: u32| sys::nftnl_expr_set_u32(p, attr as u16, v);
            let set_data = |attr: u32, d: &[u8]| {
                sys::nftnl_expr_set(p, attr as u16, d.as_ptr() as *const c_void, d.len() as u32);
            };
            match self {
                Low::Meta { key, dreg } => {
                    set_u32(sys::NFTNL_EXPR_META_KEY, *key);
                    set_u32(sys::NFTNL_EXPR_META_DREG, *dreg);
                }
                Low::Payload {
                    base,
                    offset,
                    len,
                    dreg,
                } => {
                    set_u32(sys::NFTNL_EXPR_PAYLOAD_BASE, *base);
                    set_u32(sys::NFTNL_EXPR_PAYLOAD_OFFSET, *offset);
                    set_u32(sys::NFTNL_EXPR_PAYLOAD_LEN, *len);
                    set_u32(sys::NFTNL_EXPR_PAYLOAD_DREG, *dreg);
                }
                Low::Cmp { op, data } => {
                    set_u32(sys::NFTNL_EXPR_CMP_SREG, REG32_00);
                    set_u32(sys::NFTNL_EXPR_CMP_OP, *op);
                    set_data(sys::NFTNL_EXPR_CMP_DATA, data);
                }
                Low::Bitwise { len, mask } => {
                    set_u32(sys::NFTNL_EXPR_BITWISE_SREG, REG32_00);
                    set_u32(sys::NFTNL_EXPR_BITWISE_DREG, REG32_00);
                    set_u32(sys::NFTNL_EXPR_BITWISE_LEN, *len);
                    set_data(sys::NFTNL_EXPR_BITWISE_MASK, mask);
                    set_data(sys::NFTNL_EXPR_BITWISE_XOR, &vec![0u8; mask.len()]);
                }
                Low::Ct { key } => {
                    set_u32(sys::NFTNL_EXPR_CT_KEY, *key);
                    set_u32(sys::NFTNL_EXPR_CT_DREG, REG32_00);
                }
                Low::Fib => {
                    set_u32(sys::NFTNL_EXPR_FIB_FLAGS, NFTA_FIB_F_DADDR);
                    set_u32(sys::NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
                    set_u32(sys::NFTNL_EXPR_FIB_DREG, REG32_00);
                }
                Low::Lookup {
                    sreg,
                    dreg,
                    set,
                    inv,
                } => {
                    set_u32(sys::NFTNL_EXPR_LOOKUP_SREG, *sreg);
                    if let Some(d) = dreg {
                        set_u32(sys::NFTNL_EXPR_LOOKUP_DREG, *d);
                    }
                    if *inv {
                        set_u32(sys::NFTNL_EXPR_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
                    }
                    sys::nftnl_expr_set_str(p, sys::NFTNL_EXPR_LOOKUP_SET as u16, set.as_ptr());
                }
                Low::Verdict { code, chain } => {
                    set_u32(sys::NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
                    set_u32(sys::NFTNL_EXPR_IMM_VERDICT, *code as u32);
                    if let Some(c) = chain {
                        sys::nftnl_expr_set_str(p, sys::NFTNL_EXPR_IMM_CHAIN as u16, c.as_ptr());
                    }
                }
                Low::Counter => {}
                Low::Nat {
                    family,
                    addr,
                    proto,
                } => {
                    set_u32(sys::NFTNL_EXPR_NAT_TYPE, NFT_NAT_DNAT);
                    set_u32(sys::NFTNL_EXPR_NAT_FAMILY, *family);
                    set_u32(sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, *addr);
                    if let Some(pr) = proto {
                        set_u32(sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, *pr);
                    }
                }
                Low::Masq => {}
            }
            e
        }
    }
}

fn ifname_bytes(name: &str) -> Vec<u8> {
    // nft compares the name and its terminating NUL: "br0" must not match "br01".
    let mut b = name.as_bytes().to_vec();
    b.push(0);
    b
}

fn verdict_low(v: &Verdict) -> Result<Low> {
    Ok(match v {
        Verdict::Accept => Low::Verdict {
            code: libc::NF_ACCEPT,
            chain: None,
        },
        Verdict::Drop => Low::Verdict {
            code: libc::NF_DROP,
            chain: None,
        },
        Verdict::Return => Low::Verdict {
            code: NFT_RETURN,
            chain: None,
        },
        Verdict::Jump(c) => Low::Verdict {
            code: NFT_JUMP,
            chain: Some(cstring(c)?),
        },
    })
}

/// Lowers one IR expression to libnftnl expressions (the same sequences nft itself emits).
fn lower(e: &Expr) -> Result<Vec<Low>> {
    let r = REG32_00;
    Ok(match e {
        Expr::Iifname(c, n) | Expr::Oifname(c, n) => {
            let key = if matches!(e, Expr::Iifname(..)) {
                NFT_META_IIFNAME
            } else {
                NFT_META_OIFNAME
            };
            let op = if *c == Cmp::Eq {
                NFT_CMP_EQ
            } else {
                NFT_CMP_NEQ
            };
            vec![
                Low::Meta { key, dreg: r },
                Low::Cmp {
                    op,
                    data: ifname_bytes(n),
                },
            ]
        }
        Expr::IifnameIn(s) | Expr::OifnameIn(s) => {
            let key = if matches!(e, Expr::IifnameIn(_)) {
                NFT_META_IIFNAME
            } else {
                NFT_META_OIFNAME
            };
            vec![
                Low::Meta { key, dreg: r },
                Low::Lookup {
                    sreg: r,
                    dreg: None,
                    set: cstring(s)?,
                    inv: false,
                },
            ]
        }
        Expr::IifnameEtherSaddrNotIn(s) => vec![
            // `iifname . ether saddr`: the name fills 16 bytes (4 registers), the address
            // follows in the next register, as nft lays out the concatenation.
            Low::Meta {
                key: NFT_META_IIFNAME,
                dreg: r,
            },
            Low::Payload {
                base: NFT_PAYLOAD_LL_HEADER,
                offset: ETHER_SADDR_OFFSET,
                len: 6,
                dreg: r + 4,
            },
            Low::Lookup {
                sreg: r,
                dreg: None,
                set: cstring(s)?,
                inv: true,
            },
        ],
        Expr::Nfproto(f) => {
            let v = if *f == IpFamily::V4 {
                libc::NFPROTO_IPV4
            } else {
                libc::NFPROTO_IPV6
            } as u8;
            vec![
                Low::Meta {
                    key: NFT_META_NFPROTO,
                    dreg: r,
                },
                Low::Cmp {
                    op: NFT_CMP_EQ,
                    data: vec![v],
                },
            ]
        }
        Expr::EtherType(f) => {
            let v = if *f == IpFamily::V4 {
                ETH_P_IP
            } else {
                ETH_P_IPV6
            };
            vec![
                Low::Meta {
                    key: NFT_META_PROTOCOL,
                    dreg: r,
                },
                Low::Cmp {
                    op: NFT_CMP_EQ,
                    data: v.to_be_bytes().to_vec(),
                },
            ]
        }
        Expr::Saddr(n) | Expr::Daddr(n) => {
            let src = matches!(e, Expr::Saddr(_));
            let (offset, len) = match (n.is_ipv4(), src) {
                (true, true) => (12, 4),
                (true, false) => (16, 4),
                (false, true) => (8, 16),
                (false, false) => (24, 16),
            };
            let (addr, mask): (Vec<u8>, Vec<u8>) = match n {
                ipnetwork::IpNetwork::V4(v) => {
                    (v.network().octets().to_vec(), v.mask().octets().to_vec())
                }
                ipnetwork::IpNetwork::V6(v) => {
                    (v.network().octets().to_vec(), v.mask().octets().to_vec())
                }
            };
            let full = n.prefix() == if n.is_ipv4() { 32 } else { 128 };
            let mut out = vec![Low::Payload {
                base: NFT_PAYLOAD_NETWORK,
                offset,
                len,
                dreg: r,
            }];
            if !full {
                out.push(Low::Bitwise { len, mask });
            }
            out.push(Low::Cmp {
                op: NFT_CMP_EQ,
                data: addr,
            });
            out
        }
        Expr::CtEstablished | Expr::CtDnat => {
            let (key, mask) = if *e == Expr::CtEstablished {
                (NFT_CT_STATE, CT_STATE_ESTABLISHED_RELATED)
            } else {
                (NFT_CT_STATUS, IPS_DST_NAT)
            };
            vec![
                Low::Ct { key },
                Low::Bitwise {
                    len: 4,
                    mask: mask.to_ne_bytes().to_vec(),
                },
                Low::Cmp {
                    op: NFT_CMP_NEQ,
                    data: vec![0; 4],
                },
            ]
        }
        Expr::FibDaddrLocal => vec![
            Low::Fib,
            Low::Cmp {
                op: NFT_CMP_EQ,
                data: RTN_LOCAL.to_ne_bytes().to_vec(),
            },
        ],
        Expr::Counter => vec![Low::Counter],
        Expr::Verdict(v) => vec![verdict_low(v)?],
        Expr::Vmap(k, s) => {
            let key = if *k == VmapKey::Iifname {
                NFT_META_IIFNAME
            } else {
                NFT_META_OIFNAME
            };
            vec![
                Low::Meta { key, dreg: r },
                Low::Lookup {
                    sreg: r,
                    dreg: Some(NFT_REG_VERDICT),
                    set: cstring(s)?,
                    inv: false,
                },
            ]
        }
        Expr::DnatMap {
            family,
            set,
            with_addr,
            with_port,
        } => {
            // Key `l4proto [. daddr] . dport` in consecutive 32-bit registers; the map's value
            // (address, then port) lands in the same registers for the nat expression.
            let v6 = *family == IpFamily::V6;
            let (daddr_off, alen) = if v6 { (24, 16) } else { (16, 4) };
            let nfproto = if v6 {
                libc::NFPROTO_IPV6
            } else {
                libc::NFPROTO_IPV4
            } as u32;
            let mut out = vec![Low::Meta {
                key: NFT_META_L4PROTO,
                dreg: r,
            }];
            let mut next = r + 1;
            if *with_addr {
                out.push(Low::Payload {
                    base: NFT_PAYLOAD_NETWORK,
                    offset: daddr_off,
                    len: alen,
                    dreg: next,
                });
                next += alen / 4;
            }
            out.push(Low::Payload {
                base: NFT_PAYLOAD_TRANSPORT,
                offset: 2,
                len: 2,
                dreg: next,
            });
            out.push(Low::Lookup {
                sreg: r,
                dreg: Some(r),
                set: cstring(set)?,
                inv: false,
            });
            out.push(Low::Nat {
                family: nfproto,
                addr: r,
                proto: with_port.then_some(r + alen / 4),
            });
            out
        }
        Expr::Masquerade => vec![Low::Masq],
    })
}

// ---------------------------------------------------------------- sets and elements

/// An owned libnftnl set object (the nftnl crate's `Set` has no maps or interval keys).
struct RawSet(NonNull<sys::nftnl_set>);

impl RawSet {
    fn new(family: Family, table: &str, name: &str) -> Result<RawSet> {
        let (t, n) = (cstring(table)?, cstring(name)?);
        // SAFETY: fresh allocation; libnftnl copies the strings.
        unsafe {
            let Some(s) = NonNull::new(sys::nftnl_set_alloc()) else {
                std::process::abort()
            };
            sys::nftnl_set_set_u32(
                s.as_ptr(),
                sys::NFTNL_SET_FAMILY as u16,
                u32::from(family.nfproto()),
            );
            sys::nftnl_set_set_str(s.as_ptr(), sys::NFTNL_SET_TABLE as u16, t.as_ptr());
            sys::nftnl_set_set_str(s.as_ptr(), sys::NFTNL_SET_NAME as u16, n.as_ptr());
            Ok(RawSet(s))
        }
    }

    fn ptr(&self) -> *mut sys::nftnl_set {
        self.0.as_ptr()
    }

    fn set_data(&self, attr: u16, d: &[u8]) {
        // SAFETY: libnftnl copies `d`.
        unsafe {
            sys::nftnl_set_set_data(
                self.ptr(),
                attr,
                d.as_ptr() as *const c_void,
                d.len() as u32,
            );
        }
    }

    /// A set definition as nft would create it.
    fn define(family: Family, table: &str, s: &ir::Set, id: u32) -> Result<RawSet> {
        let raw = RawSet::new(family, table, &s.name)?;
        let mut flags = 0;
        if s.interval {
            flags |= NFT_SET_INTERVAL;
        }
        if s.data.is_some() {
            flags |= NFT_SET_MAP;
        }
        if s.interval && s.key.len() > 1 {
            flags |= NFT_SET_CONCAT;
        }
        // SAFETY: plain attribute setters on our own object.
        unsafe {
            let p = raw.ptr();
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_ID as u16, id);
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FLAGS as u16, flags);
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_TYPE as u16, ir::fields_type(&s.key));
            sys::nftnl_set_set_u32(
                p,
                sys::NFTNL_SET_KEY_LEN as u16,
                ir::fields_len(&s.key) as u32,
            );
            match &s.data {
                None => {}
                Some(SetData::Verdict) => {
                    sys::nftnl_set_set_u32(p, NFTNL_SET_DATA_TYPE, NFT_DATA_VERDICT);
                    sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DATA_LEN as u16, 0);
                }
                Some(SetData::Fields(f)) => {
                    sys::nftnl_set_set_u32(p, NFTNL_SET_DATA_TYPE, ir::fields_type(f));
                    sys::nftnl_set_set_u32(
                        p,
                        sys::NFTNL_SET_DATA_LEN as u16,
                        ir::fields_len(f) as u32,
                    );
                }
            }
        }
        if s.interval && s.key.len() > 1 {
            // Field sizes let the kernel pick its concatenated-range backend (pipapo).
            let lens: Vec<u8> = s.key.iter().map(|f| f.size() as u8).collect();
            raw.set_data(NFTNL_SET_DESC_CONCAT, &lens);
        }
        let mut udata = Vec::new();
        if s.key == [ir::Field::Ifname] {
            // nft reads an interface name key as a big-endian number unless told otherwise,
            // and `nft list` then shows every name as "" (the kernel does not care).
            udata.extend([UDATA_SET_KEYBYTEORDER, 4]);
            udata.extend(BYTEORDER_HOST_ENDIAN.to_ne_bytes());
        }
        if !s.comment.is_empty() {
            udata.extend(udata_comment(UDATA_SET_COMMENT, &s.comment));
        }
        if !udata.is_empty() {
            raw.set_data(sys::NFTNL_SET_USERDATA as u16, &udata);
        }
        Ok(raw)
    }

    fn add_element(&self, interval: bool, e: &Element) -> Result<()> {
        // SAFETY: the element is handed over to the set, which frees it; data is copied.
        unsafe {
            let Some(el) = NonNull::new(sys::nftnl_set_elem_alloc()) else {
                std::process::abort()
            };
            let p = el.as_ptr();
            let put = |attr: u16, d: &[u8]| {
                sys::nftnl_set_elem_set(p, attr, d.as_ptr() as *const c_void, d.len() as u32);
            };
            put(sys::NFTNL_SET_ELEM_KEY as u16, &ir::encode_values(&e.key));
            if interval {
                put(
                    NFTNL_SET_ELEM_KEY_END,
                    &ir::encode_values(e.key_end.as_ref().unwrap_or(&e.key)),
                );
            }
            match &e.data {
                None => {}
                Some(ElemData::Values(v)) => {
                    put(sys::NFTNL_SET_ELEM_DATA as u16, &ir::encode_values(v))
                }
                Some(ElemData::Verdict(v)) => {
                    let (code, chain) = match v {
                        Verdict::Accept => (libc::NF_ACCEPT, None),
                        Verdict::Drop => (libc::NF_DROP, None),
                        Verdict::Return => (NFT_RETURN, None),
                        Verdict::Jump(c) => (NFT_JUMP, Some(cstring(c)?)),
                    };
                    sys::nftnl_set_elem_set_u32(p, sys::NFTNL_SET_ELEM_VERDICT as u16, code as u32);
                    if let Some(c) = chain {
                        sys::nftnl_set_elem_set_str(
                            p,
                            sys::NFTNL_SET_ELEM_CHAIN as u16,
                            c.as_ptr(),
                        );
                    }
                }
            }
            if !e.comment.is_empty() {
                put(
                    NFTNL_SET_ELEM_USERDATA,
                    &udata_comment(UDATA_COMMENT, &e.comment),
                );
            }
            sys::nftnl_set_elem_add(self.ptr(), p);
        }
        Ok(())
    }
}

impl Drop for RawSet {
    fn drop(&mut self) {
        // SAFETY: we own the set (and, through it, its elements).
        unsafe { sys::nftnl_set_free(self.ptr()) }
    }
}

// ---------------------------------------------------------------- the batch

/// One transaction being built: messages plus a description of each for error messages.
#[derive(Default)]
pub struct Batch {
    msgs: Vec<Vec<u8>>,
    what: Vec<String>,
}

/// Builds one message into a scratch buffer big enough for any nf_tables message.
fn build(f: impl FnOnce(*mut c_char)) -> Vec<u8> {
    let mut buf = vec![0u32; nftnl::nft_nlmsg_maxsize() as usize / 4 + 1];
    let p = buf.as_mut_ptr() as *mut c_char;
    f(p);
    let bytes: &[u8] = bytemuck_u8(&buf);
    let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    bytes[..len.min(bytes.len())].to_vec()
}

fn bytemuck_u8(v: &[u32]) -> &[u8] {
    // SAFETY: u32 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 4) }
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    fn push_msg<T: NlMsg>(&mut self, m: &T, ty: MsgType, what: String) {
        // SAFETY: `build` hands a buffer of nft_nlmsg_maxsize() bytes, as NlMsg::write requires.
        self.msgs
            .push(build(|p| unsafe { m.write(p as *mut c_void, 0, ty) }));
        self.what.push(what);
    }

    pub fn add_table(&mut self, family: Family, name: &str) -> Result<()> {
        let t = nftnl::Table::new(&cstring(name)?, proto_family(family));
        self.push_msg(&t, MsgType::Add, format!("add table {family} {name}"));
        Ok(())
    }

    pub fn del_table(&mut self, family: Family, name: &str) -> Result<()> {
        let t = nftnl::Table::new(&cstring(name)?, proto_family(family));
        self.push_msg(&t, MsgType::Del, format!("delete table {family} {name}"));
        Ok(())
    }

    pub fn add_chain(&mut self, family: Family, table: &str, c: &ir::Chain) -> Result<()> {
        let t = nftnl::Table::new(&cstring(table)?, proto_family(family));
        let mut ch = nftnl::Chain::new(&cstring(&c.name)?, &t);
        if let Some(b) = &c.base {
            let hook = match b.hook {
                ir::Hook::Prerouting => nftnl::Hook::PreRouting,
                ir::Hook::Input => nftnl::Hook::In,
                ir::Hook::Forward => nftnl::Hook::Forward,
                ir::Hook::Output => nftnl::Hook::Out,
                ir::Hook::Postrouting => nftnl::Hook::PostRouting,
            };
            ch.set_hook(hook, b.priority);
            ch.set_type(match b.ty {
                ir::ChainType::Filter => nftnl::ChainType::Filter,
                ir::ChainType::Nat => nftnl::ChainType::Nat,
            });
            ch.set_policy(nftnl::Policy::Accept);
        }
        self.push_msg(
            &ch,
            MsgType::Add,
            format!("add chain {family} {table} {}", c.name),
        );
        Ok(())
    }

    /// Deletes a chain with its rules (the kernel refuses while a map element still jumps to it,
    /// so delete those elements earlier in the same batch).
    pub fn del_chain(&mut self, family: Family, table: &str, chain: &str) -> Result<()> {
        let t = nftnl::Table::new(&cstring(table)?, proto_family(family));
        let ch = nftnl::Chain::new(&cstring(chain)?, &t);
        self.push_msg(
            &ch,
            MsgType::Del,
            format!("delete chain {family} {table} {chain}"),
        );
        Ok(())
    }

    /// Removes every rule of a chain (a DELRULE without handle), keeping the chain.
    pub fn flush_chain(&mut self, family: Family, table: &str, chain: &str) -> Result<()> {
        let t = nftnl::Table::new(&cstring(table)?, proto_family(family));
        let ch = nftnl::Chain::new(&cstring(chain)?, &t);
        let r = nftnl::Rule::new(&ch);
        self.push_msg(
            &r,
            MsgType::Del,
            format!("flush chain {family} {table} {chain}"),
        );
        Ok(())
    }

    /// Appends a rule.
    pub fn add_rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        rule: &ir::Rule,
    ) -> Result<()> {
        let t = nftnl::Table::new(&cstring(table)?, proto_family(family));
        let ch = nftnl::Chain::new(&cstring(chain)?, &t);
        let mut r = nftnl::Rule::new(&ch);
        for e in &rule.exprs {
            for l in lower(e)? {
                r.add_expr(&l);
            }
        }
        if !rule.comment.is_empty() {
            r.set_comment(cstring(&rule.comment)?).map_err(|e| {
                Error::InvalidConfig(format!("rule comment {:?}: {e}", rule.comment))
            })?;
        }
        self.push_msg(
            &r,
            MsgType::Add,
            format!(
                "add rule {family} {table} {chain} {}",
                ir::render_rule(rule)
            ),
        );
        Ok(())
    }

    pub fn del_rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        handle: u64,
    ) -> Result<()> {
        let t = nftnl::Table::new(&cstring(table)?, proto_family(family));
        let ch = nftnl::Chain::new(&cstring(chain)?, &t);
        let mut r = nftnl::Rule::new(&ch);
        r.set_handle(handle);
        self.push_msg(
            &r,
            MsgType::Del,
            format!("delete rule {family} {table} {chain} handle {handle}"),
        );
        Ok(())
    }

    pub fn add_set(&mut self, family: Family, table: &str, s: &ir::Set, id: u32) -> Result<()> {
        let raw = RawSet::define(family, table, s, id)?;
        let fam = family.nfproto();
        // SAFETY: buffer from `build`, large enough for any message.
        self.msgs.push(build(|p| unsafe {
            let h = sys::nftnl_nlmsg_build_hdr(
                p,
                NFT_MSG_NEWSET,
                fam,
                (libc::NLM_F_CREATE | libc::NLM_F_ACK) as u16,
                0,
            );
            sys::nftnl_set_nlmsg_build_payload(h, raw.ptr());
        }));
        self.what
            .push(format!("add set {family} {table} {}", s.name));
        Ok(())
    }

    /// Adds (or deletes) elements of one set, in messages of at most [`ELEMS_PER_MSG`]. Adds
    /// are exclusive: an element someone else added meanwhile fails the transaction.
    pub fn elements(
        &mut self,
        add: bool,
        family: Family,
        table: &str,
        set: &str,
        interval: bool,
        elems: &[&Element],
    ) -> Result<()> {
        self.elements_with(add, true, family, table, set, interval, elems)
    }

    /// Adds elements that may already exist (port markers shared by several endpoints).
    pub fn add_elements_shared(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elems: &[&Element],
    ) -> Result<()> {
        self.elements_with(true, false, family, table, set, false, elems)
    }

    #[allow(clippy::too_many_arguments)]
    fn elements_with(
        &mut self,
        add: bool,
        exclusive: bool,
        family: Family,
        table: &str,
        set: &str,
        interval: bool,
        elems: &[&Element],
    ) -> Result<()> {
        for chunk in elems.chunks(ELEMS_PER_MSG) {
            let raw = RawSet::new(family, table, set)?;
            for e in chunk {
                raw.add_element(interval, e)?;
            }
            let (ty, flags) = if add {
                let excl = if exclusive { libc::NLM_F_EXCL } else { 0 };
                (
                    NFT_MSG_NEWSETELEM,
                    libc::NLM_F_CREATE | excl | libc::NLM_F_ACK,
                )
            } else {
                (NFT_MSG_DELSETELEM, libc::NLM_F_ACK)
            };
            let fam = family.nfproto();
            // SAFETY: buffer from `build`; at most ELEMS_PER_MSG elements fit in it.
            self.msgs.push(build(|p| unsafe {
                let h = sys::nftnl_nlmsg_build_hdr(p, ty, fam, flags as u16, 0);
                sys::nftnl_set_elems_nlmsg_build_payload(h, raw.ptr());
            }));
            let first = chunk.first().map(|e| e.to_string()).unwrap_or_default();
            let more = if chunk.len() > 1 {
                format!(" (+{} more)", chunk.len() - 1)
            } else {
                String::new()
            };
            self.what.push(format!(
                "{} element {family} {table} {set} {{ {first} }}{more}",
                if add { "add" } else { "delete" }
            ));
        }
        Ok(())
    }
}

impl Batch {
    /// Deletes elements exactly as the kernel reported them (key and range end as read back),
    /// which is how stale or other-tagged entries are removed without re-deriving their keys.
    pub fn del_raw_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elems: &[&ElemInfo],
    ) -> Result<()> {
        for chunk in elems.chunks(ELEMS_PER_MSG) {
            let raw = RawSet::new(family, table, set)?;
            for e in chunk {
                // SAFETY: the element is handed over to the set; data is copied.
                unsafe {
                    let Some(el) = NonNull::new(sys::nftnl_set_elem_alloc()) else {
                        std::process::abort()
                    };
                    let p = el.as_ptr();
                    sys::nftnl_set_elem_set(
                        p,
                        sys::NFTNL_SET_ELEM_KEY as u16,
                        e.key.as_ptr() as *const c_void,
                        e.key.len() as u32,
                    );
                    if let Some(end) = &e.key_end {
                        sys::nftnl_set_elem_set(
                            p,
                            NFTNL_SET_ELEM_KEY_END,
                            end.as_ptr() as *const c_void,
                            end.len() as u32,
                        );
                    }
                    sys::nftnl_set_elem_add(raw.ptr(), p);
                }
            }
            let fam = family.nfproto();
            // SAFETY: buffer from `build`.
            self.msgs.push(build(|p| unsafe {
                let h = sys::nftnl_nlmsg_build_hdr(
                    p,
                    NFT_MSG_DELSETELEM,
                    fam,
                    libc::NLM_F_ACK as u16,
                    0,
                );
                sys::nftnl_set_elems_nlmsg_build_payload(h, raw.ptr());
            }));
            let tags: Vec<&str> = chunk.iter().map(|e| e.comment.as_str()).collect();
            self.what.push(format!(
                "delete {} element(s) of {family} {table} {set} ({})",
                chunk.len(),
                tags.join(", ")
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- what is there now

#[derive(Debug, Clone)]
pub struct ChainInfo {
    pub family: Family,
    pub table: String,
    pub name: String,
    pub hook: Option<u32>,
    /// NF_ACCEPT / NF_DROP for base chains.
    pub policy: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElemInfo {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub data: Option<Vec<u8>>,
    pub verdict: Option<(i32, String)>,
    pub comment: String,
}

impl ElemInfo {
    /// What the kernel reports back for element `e` of a set of that kind.
    pub fn from_element(interval: bool, e: &Element) -> ElemInfo {
        let (data, verdict) = match &e.data {
            None => (None, None),
            Some(ElemData::Values(v)) => (Some(ir::encode_values(v)), None),
            Some(ElemData::Verdict(v)) => {
                let (code, chain) = match v {
                    Verdict::Accept => (libc::NF_ACCEPT, String::new()),
                    Verdict::Drop => (libc::NF_DROP, String::new()),
                    Verdict::Return => (NFT_RETURN, String::new()),
                    Verdict::Jump(c) => (NFT_JUMP, c.clone()),
                };
                (None, Some((code, chain)))
            }
        };
        ElemInfo {
            key: ir::encode_values(&e.key),
            key_end: interval.then(|| ir::encode_values(e.key_end.as_ref().unwrap_or(&e.key))),
            data,
            verdict,
            comment: e.comment.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RuleInfo {
    pub handle: u64,
    pub comment: String,
}

/// The parts of the current ruleset an operation looked at, and the generation it read them at.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub genid: u32,
    pub tables: HashSet<(Family, String)>,
    pub chains: Vec<ChainInfo>,
    pub sets: HashSet<(Family, String, String)>,
    pub elements: HashMap<(Family, String), Vec<ElemInfo>>,
    pub rules: HashMap<(Family, String, String), Vec<RuleInfo>>,
    /// Whether `rules` was read (operations that only touch elements skip it).
    pub rules_loaded: bool,
}

impl Snapshot {
    pub fn has_table(&self, f: Family, t: &str) -> bool {
        self.tables.contains(&(f, t.to_string()))
    }
    pub fn has_chain(&self, f: Family, t: &str, c: &str) -> bool {
        self.chains
            .iter()
            .any(|x| x.family == f && x.table == t && x.name == c)
    }
    pub fn has_set(&self, f: Family, t: &str, s: &str) -> bool {
        self.sets.contains(&(f, t.to_string(), s.to_string()))
    }
    pub fn rules(&self, f: Family, t: &str, c: &str) -> &[RuleInfo] {
        self.rules
            .get(&(f, t.to_string(), c.to_string()))
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }
}

// ---------------------------------------------------------------- the socket

/// How a commit ended.
pub enum Commit {
    Done,
    /// Someone changed the ruleset after our snapshot: read again and retry.
    Restart,
}

/// A netfilter netlink socket bound to the namespace it was opened in.
pub struct Socket {
    sock: mnl::Socket,
    seq: u32,
    buf: Vec<u32>,
    /// A committed transaction deleted something: closing this socket will wait for the
    /// kernel to free it (see [`release`]).
    frees_pending: bool,
}

// SAFETY: the mnl socket is an fd plus its bound address; nothing in it is tied to the thread
// that opened it (it stays in the namespace it was created in), and `NftFirewall` serialises
// use behind a Mutex.
unsafe impl Send for Socket {}

/// Receive buffer size: large enough for any dump message the kernel builds.
const RECV_BUF: usize = 256 * 1024;

struct Hdr {
    len: usize,
    ty: u16,
    flags: u16,
    seq: u32,
}

fn hdr_at(b: &[u8], off: usize) -> Option<Hdr> {
    if off + 16 > b.len() {
        return None;
    }
    let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let len = u32_at(off) as usize;
    if len < 16 || off + len > b.len() {
        return None;
    }
    Some(Hdr {
        len,
        ty: u16::from_ne_bytes([b[off + 4], b[off + 5]]),
        flags: u16::from_ne_bytes([b[off + 6], b[off + 7]]),
        seq: u32_at(off + 8),
    })
}

fn kernel_error(context: &str, errno: i32) -> Error {
    Error::Netlink {
        context: context.to_string(),
        errno: Some(errno),
        message: std::io::Error::from_raw_os_error(errno).to_string(),
    }
}

impl Socket {
    /// Opens the socket inside `ns` (netlink sockets belong to the namespace they are created
    /// in, whatever thread uses them later).
    pub fn open_in(ns: &Netns) -> Result<Socket> {
        let sock = ns
            .run(|| -> std::io::Result<SendSock> {
                mnl::Socket::new(mnl::Bus::Netfilter).map(SendSock)
            })?
            .map_err(|e| {
                Error::io(
                    format!("open a netfilter netlink socket in {}", ns.path().display()),
                    e,
                )
            })?
            .0;
        let fd = mnl_fd(&sock);
        // Never wait forever on a kernel answer: an operation fails instead of hanging.
        let tv = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        let big: libc::c_int = 8 * 1024 * 1024;
        // SAFETY: setsockopt on our own fd with correctly sized values.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            // Large batches (a shifted 1000-port range) must fit in one sendmsg, and many
            // acknowledgements must fit in the receive queue. *FORCE needs CAP_NET_ADMIN, which
            // programming nftables needs anyway; fall back to the plain option.
            for (force, plain) in [
                (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
                (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            ] {
                let sz = std::mem::size_of::<libc::c_int>() as u32;
                if libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    force,
                    &big as *const _ as *const c_void,
                    sz,
                ) != 0
                {
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        plain,
                        &big as *const _ as *const c_void,
                        sz,
                    );
                }
            }
        }
        Ok(Socket {
            sock,
            seq: initial_seq(),
            buf: vec![0u32; RECV_BUF / 4],
            frees_pending: false,
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn send(&self, data: &[u8], what: &str) -> Result<()> {
        let n = self
            .sock
            .send(data)
            .map_err(|e| Error::io(format!("send {what} to nftables"), e))?;
        if n != data.len() {
            return Err(Error::Firewall(format!(
                "short send of {what} to nftables ({n} of {} bytes)",
                data.len()
            )));
        }
        Ok(())
    }

    /// Receives into the internal buffer; returns the filled length.
    fn recv(&mut self, what: &str) -> Result<usize> {
        let buf: &mut [u8] =
            // SAFETY: viewing our own u32 buffer as bytes (alignment only gets weaker).
            unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr() as *mut u8, self.buf.len() * 4) };
        self.sock
            .recv_raw(buf)
            .map_err(|e| Error::io(format!("receive {what} from nftables"), e))
    }

    /// Sends one request and feeds each answer message (header pointer and its bytes) to `f`
    /// until the dump ends. ENOENT (table/set/chain absent) ends the dump as empty.
    fn dump(
        &mut self,
        what: &str,
        build_req: impl FnOnce(*mut c_char, u32),
        mut f: impl FnMut(*const libc::nlmsghdr),
    ) -> Result<()> {
        let seq = self.next_seq();
        let req = build(|p| build_req(p, seq));
        self.send(&req, what)?;
        loop {
            let n = self.recv(what)?;
            let bytes = &bytemuck_u8(&self.buf)[..n];
            let mut off = 0;
            while let Some(h) = hdr_at(bytes, off) {
                if h.seq == seq {
                    match h.ty as i32 {
                        libc::NLMSG_DONE => return Ok(()),
                        libc::NLMSG_ERROR => {
                            let err = if h.len >= 20 {
                                i32::from_ne_bytes([
                                    bytes[off + 16],
                                    bytes[off + 17],
                                    bytes[off + 18],
                                    bytes[off + 19],
                                ])
                            } else {
                                0
                            };
                            return match -err {
                                0 => Ok(()),
                                libc::ENOENT => Ok(()),
                                e => Err(kernel_error(&format!("read {what}"), e)),
                            };
                        }
                        _ => {
                            f(bytes[off..].as_ptr() as *const libc::nlmsghdr);
                            if h.flags & libc::NLM_F_MULTI as u16 == 0 {
                                return Ok(());
                            }
                        }
                    }
                }
                off += h.len.div_ceil(4) * 4;
            }
        }
    }

    /// The current ruleset generation.
    pub fn genid(&mut self) -> Result<u32> {
        let mut gen = None;
        self.dump(
            "ruleset generation",
            // SAFETY (all build closures below): the buffer comes from `build`.
            |p, seq| unsafe {
                sys::nftnl_nlmsg_build_hdr(p, NFT_MSG_GETGEN, libc::AF_UNSPEC as u16, 0, seq);
            },
            |h| {
                // NEWGEN: nlmsghdr(16) + nfgenmsg(4) + attributes; NFTA_GEN_ID is a u32 BE.
                // SAFETY: `h` points at a whole message inside the receive buffer.
                let len = unsafe { (*h).nlmsg_len } as usize;
                let b = unsafe { std::slice::from_raw_parts(h as *const u8, len) };
                let mut off = 20;
                while off + 4 <= b.len() {
                    let alen = u16::from_ne_bytes([b[off], b[off + 1]]) as usize;
                    let aty = u16::from_ne_bytes([b[off + 2], b[off + 3]]) & 0x3fff;
                    if alen < 4 {
                        break;
                    }
                    if aty == NFTA_GEN_ID && alen >= 8 && off + 8 <= b.len() {
                        gen = Some(u32::from_be_bytes([
                            b[off + 4],
                            b[off + 5],
                            b[off + 6],
                            b[off + 7],
                        ]));
                    }
                    off += alen.div_ceil(4) * 4;
                }
            },
        )?;
        gen.ok_or_else(|| {
            Error::Firewall("the kernel did not report an nftables generation id".into())
        })
    }

    pub fn tables(&mut self) -> Result<HashSet<(Family, String)>> {
        let mut out = HashSet::new();
        self.dump(
            "tables",
            |p, seq| unsafe {
                sys::nftnl_nlmsg_build_hdr(
                    p,
                    NFT_MSG_GETTABLE,
                    libc::AF_UNSPEC as u16,
                    libc::NLM_F_DUMP as u16,
                    seq,
                );
            },
            // SAFETY: parse into a fresh object that is freed right after.
            |h| unsafe {
                let t = sys::nftnl_table_alloc();
                if t.is_null() {
                    return;
                }
                if sys::nftnl_table_nlmsg_parse(h, t) >= 0 {
                    let fam = sys::nftnl_table_get_u32(t, sys::NFTNL_TABLE_FAMILY as u16);
                    let name = cstr(sys::nftnl_table_get_str(t, sys::NFTNL_TABLE_NAME as u16));
                    if let Some(f) = Family::from_nfproto(fam) {
                        out.insert((f, name));
                    }
                }
                sys::nftnl_table_free(t);
            },
        )?;
        Ok(out)
    }

    /// Every chain of every table (to find other tools' blocking base chains too).
    pub fn chains(&mut self) -> Result<Vec<ChainInfo>> {
        let mut out = Vec::new();
        self.dump(
            "chains",
            |p, seq| unsafe {
                sys::nftnl_nlmsg_build_hdr(
                    p,
                    NFT_MSG_GETCHAIN,
                    libc::AF_UNSPEC as u16,
                    libc::NLM_F_DUMP as u16,
                    seq,
                );
            },
            |h| unsafe {
                let c = sys::nftnl_chain_alloc();
                if c.is_null() {
                    return;
                }
                if sys::nftnl_chain_nlmsg_parse(h, c) >= 0 {
                    let fam = sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_FAMILY as u16);
                    let is = |a: u32| sys::nftnl_chain_is_set(c, a as u16);
                    let info = Family::from_nfproto(fam).map(|family| ChainInfo {
                        family,
                        table: cstr(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TABLE as u16)),
                        name: cstr(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_NAME as u16)),
                        hook: is(sys::NFTNL_CHAIN_HOOKNUM)
                            .then(|| sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_HOOKNUM as u16)),
                        policy: is(sys::NFTNL_CHAIN_POLICY)
                            .then(|| sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_POLICY as u16)),
                    });
                    out.extend(info);
                }
                sys::nftnl_chain_free(c);
            },
        )?;
        Ok(out)
    }

    pub fn sets(&mut self, family: Family, table: &str) -> Result<Vec<String>> {
        let t = cstring(table)?;
        let mut out = Vec::new();
        self.dump(
            "sets",
            |p, seq| unsafe {
                let h = sys::nftnl_nlmsg_build_hdr(
                    p,
                    NFT_MSG_GETSET,
                    family.nfproto(),
                    libc::NLM_F_DUMP as u16,
                    seq,
                );
                let s = sys::nftnl_set_alloc();
                if !s.is_null() {
                    sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, t.as_ptr());
                    sys::nftnl_set_nlmsg_build_payload(h, s);
                    sys::nftnl_set_free(s);
                }
            },
            |h| unsafe {
                let s = sys::nftnl_set_alloc();
                if s.is_null() {
                    return;
                }
                if sys::nftnl_set_nlmsg_parse(h, s) >= 0 {
                    out.push(cstr(sys::nftnl_set_get_str(s, sys::NFTNL_SET_NAME as u16)));
                }
                sys::nftnl_set_free(s);
            },
        )?;
        Ok(out)
    }

    pub fn elements(&mut self, family: Family, table: &str, set: &str) -> Result<Vec<ElemInfo>> {
        let raw = RawSet::new(family, table, set)?;
        let mut out = Vec::new();
        self.dump(
            &format!("elements of {family} {table} {set}"),
            |p, seq| unsafe {
                let h = sys::nftnl_nlmsg_build_hdr(
                    p,
                    NFT_MSG_GETSETELEM,
                    family.nfproto(),
                    libc::NLM_F_DUMP as u16,
                    seq,
                );
                sys::nftnl_set_elems_nlmsg_build_payload(h, raw.ptr());
            },
            |h| unsafe {
                let s = sys::nftnl_set_alloc();
                if s.is_null() {
                    return;
                }
                if sys::nftnl_set_elems_nlmsg_parse(h, s) >= 0 {
                    sys::nftnl_set_elem_foreach(
                        s,
                        Some(collect_elem),
                        &mut out as *mut Vec<ElemInfo> as *mut c_void,
                    );
                }
                sys::nftnl_set_free(s);
            },
        )?;
        Ok(out)
    }

    /// Looks up one element by key: the element with exactly that key in a hash set, the element
    /// whose ranges contain it in an interval set. None when there is none.
    pub fn get_element(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        key: &[u8],
    ) -> Result<Option<ElemInfo>> {
        let raw = RawSet::new(family, table, set)?;
        // SAFETY: the element is handed over to the set; the key is copied.
        unsafe {
            let Some(el) = NonNull::new(sys::nftnl_set_elem_alloc()) else {
                std::process::abort()
            };
            sys::nftnl_set_elem_set(
                el.as_ptr(),
                sys::NFTNL_SET_ELEM_KEY as u16,
                key.as_ptr() as *const c_void,
                key.len() as u32,
            );
            sys::nftnl_set_elem_add(raw.ptr(), el.as_ptr());
        }
        let mut out = Vec::new();
        self.dump(
            &format!("element of {family} {table} {set}"),
            |p, seq| unsafe {
                let h = sys::nftnl_nlmsg_build_hdr(p, NFT_MSG_GETSETELEM, family.nfproto(), 0, seq);
                sys::nftnl_set_elems_nlmsg_build_payload(h, raw.ptr());
            },
            |h| unsafe {
                let s = sys::nftnl_set_alloc();
                if s.is_null() {
                    return;
                }
                if sys::nftnl_set_elems_nlmsg_parse(h, s) >= 0 {
                    sys::nftnl_set_elem_foreach(
                        s,
                        Some(collect_elem),
                        &mut out as *mut Vec<ElemInfo> as *mut c_void,
                    );
                }
                sys::nftnl_set_free(s);
            },
        )?;
        Ok(out.into_iter().next())
    }

    /// The rules of one table (handles and comments).
    pub fn rules(&mut self, family: Family, table: &str) -> Result<HashMap<String, Vec<RuleInfo>>> {
        let t = cstring(table)?;
        let mut out: HashMap<String, Vec<RuleInfo>> = HashMap::new();
        self.dump(
            &format!("rules of {family} {table}"),
            |p, seq| unsafe {
                let h = sys::nftnl_nlmsg_build_hdr(
                    p,
                    NFT_MSG_GETRULE,
                    family.nfproto(),
                    libc::NLM_F_DUMP as u16,
                    seq,
                );
                let r = sys::nftnl_rule_alloc();
                if !r.is_null() {
                    sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_TABLE as u16, t.as_ptr());
                    sys::nftnl_rule_nlmsg_build_payload(h, r);
                    sys::nftnl_rule_free(r);
                }
            },
            |h| unsafe {
                let r = sys::nftnl_rule_alloc();
                if r.is_null() {
                    return;
                }
                if sys::nftnl_rule_nlmsg_parse(h, r) >= 0 {
                    let chain = cstr(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_CHAIN as u16));
                    let handle = sys::nftnl_rule_get_u64(r, sys::NFTNL_RULE_HANDLE as u16);
                    let mut len = 0u32;
                    let d = sys::nftnl_rule_get_data(r, sys::NFTNL_RULE_USERDATA as u16, &mut len);
                    let comment = if d.is_null() {
                        String::new()
                    } else {
                        parse_udata_comment(
                            std::slice::from_raw_parts(d as *const u8, len as usize),
                            UDATA_COMMENT,
                        )
                    };
                    out.entry(chain)
                        .or_default()
                        .push(RuleInfo { handle, comment });
                }
                sys::nftnl_rule_free(r);
            },
        )?;
        Ok(out)
    }

    /// Sends the batch as one transaction, checked against `genid`.
    pub fn commit(&mut self, batch: &Batch, genid: u32) -> Result<Commit> {
        if batch.is_empty() {
            return Ok(Commit::Done);
        }
        let begin_seq = self.next_seq();
        let mut out = Vec::with_capacity(batch.msgs.iter().map(|m| m.len()).sum::<usize>() + 64);
        batch_marker(&mut out, NFNL_MSG_BATCH_BEGIN, begin_seq, Some(genid));
        let mut seqs = Vec::with_capacity(batch.msgs.len());
        for m in &batch.msgs {
            let seq = self.next_seq();
            seqs.push(seq);
            let start = out.len();
            out.extend_from_slice(m);
            out[start + 8..start + 12].copy_from_slice(&seq.to_ne_bytes());
            while out.len() % 4 != 0 {
                out.push(0);
            }
        }
        let end_seq = self.next_seq();
        batch_marker(&mut out, NFNL_MSG_BATCH_END, end_seq, None);
        self.send(&out, "ruleset update")?;

        // Every message asked for an acknowledgement; errors come as acknowledgements with a
        // non-zero code. The batch is all-or-nothing, so the first error explains it.
        let mut pending: HashSet<u32> = seqs.iter().copied().collect();
        let mut first_err: Option<(u32, i32)> = None;
        while !pending.is_empty() {
            let n = self.recv("ruleset update acknowledgements")?;
            let bytes = &bytemuck_u8(&self.buf)[..n];
            let mut off = 0;
            while let Some(h) = hdr_at(bytes, off) {
                if h.ty as i32 == libc::NLMSG_ERROR && h.len >= 20 {
                    let err = -i32::from_ne_bytes([
                        bytes[off + 16],
                        bytes[off + 17],
                        bytes[off + 18],
                        bytes[off + 19],
                    ]);
                    if h.seq == begin_seq && err != 0 {
                        if err == libc::ERESTART {
                            return Ok(Commit::Restart);
                        }
                        return Err(kernel_error("start nftables transaction", err));
                    }
                    if pending.remove(&h.seq) && err != 0 && first_err.is_none() {
                        first_err = Some((h.seq, err));
                    }
                }
                off += h.len.div_ceil(4) * 4;
            }
        }
        match first_err {
            None => {
                self.frees_pending |= batch.msgs.iter().any(|m| frees_objects(m));
                Ok(Commit::Done)
            }
            Some((seq, errno)) => {
                let idx = seqs.iter().position(|s| *s == seq).unwrap_or(0);
                let what = batch
                    .what
                    .get(idx)
                    .map(String::as_str)
                    .unwrap_or("ruleset update");
                Err(kernel_error(
                    &format!("nftables refused the transaction at `{what}`"),
                    errno,
                ))
            }
        }
    }
}

/// Sequence numbers start somewhere per-socket-unique so a stale answer is never mistaken.
fn initial_seq() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(1);
    t ^ std::process::id().rotate_left(16)
}

/// nfnetlink batch begin/end: nlmsghdr + nfgenmsg (+ the generation the batch was built on).
fn batch_marker(out: &mut Vec<u8>, ty: u16, seq: u32, genid: Option<u32>) {
    let len: u32 = 16 + 4 + if genid.is_some() { 8 } else { 0 };
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version, res_id (the subsystem, big-endian).
    out.push(libc::AF_UNSPEC as u8);
    out.push(0);
    out.extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
    if let Some(g) = genid {
        out.extend_from_slice(&8u16.to_ne_bytes());
        out.extend_from_slice(&NFNL_BATCH_GENID.to_ne_bytes());
        out.extend_from_slice(&g.to_be_bytes());
    }
}

/// Whether a batch message deletes something (table, chain, rule, set, element, object,
/// flowtable): the kernel frees those after an RCU grace period.
fn frees_objects(msg: &[u8]) -> bool {
    let Some(ty) = msg.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]])) else {
        return false;
    };
    // The low byte is the nf_tables message (NFT_MSG_DELTABLE = 2, DELCHAIN 5, DELRULE 8,
    // DELSET 11, DELSETELEM 14, DELOBJ 20, DELFLOWTABLE 24, DESTROY* 26–31).
    matches!(ty & 0xff, 2 | 5 | 8 | 11 | 14 | 20 | 24 | 26..=31)
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.frees_pending && crate::reaper::detached_cleanup() {
            release::in_background(mnl_fd(&self.sock));
        }
    }
}

/// Closing a netfilter socket after a transaction that deleted something makes the kernel
/// finish freeing those objects first: on the socket's release nf_tables flushes its destroy
/// work, which waits for an RCU grace period (~15 ms measured on this project's VMs; the
/// deletion itself is already committed and visible). A short-lived CNI plugin closes its
/// socket on exit, so DEL would return 15 ms late for nothing. Instead a forked child keeps
/// the socket open until this process has exited and then closes it: the wait moves to a
/// process nobody waits for.
///
/// The child also waits a little before it closes: the kernel does that flush holding the
/// ruleset's commit mutex, so a close right away stalls the next plugin's transaction (the
/// bridge DEL that follows a portmap DEL in a chain) for the grace period. By the time the
/// child closes, the kernel's own worker has usually freed the objects, and the close finds
/// nothing to wait for.
mod release {
    /// Longer than a grace period on a busy machine (10–40 ms measured).
    const LINGER: std::time::Duration = std::time::Duration::from_millis(150);

    /// Hands the last reference of `fd` to a child that closes it after this process exited;
    /// the caller's own close (at exit) is then quick. Best effort: if fork fails, the caller
    /// simply pays the wait.
    pub fn in_background(fd: libc::c_int) {
        crate::after_exit::hand_over(&crate::after_exit::Work {
            keep: &[fd],
            requests: &[],
            unlink: &[],
            linger: LINGER,
        });
    }
}

struct SendSock(mnl::Socket);
// SAFETY: see `Socket`: only moved from the namespace thread to its owner.
unsafe impl Send for SendSock {}

fn mnl_fd(s: &mnl::Socket) -> libc::c_int {
    // SAFETY: the pointer is the live mnl socket owned by `s`.
    unsafe { mnl::mnl_sys::mnl_socket_get_fd(s.as_raw_socket()) }
}

/// Copies a C string from libnftnl (empty when absent).
fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: libnftnl returns NUL-terminated strings owned by the parsed object.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

unsafe extern "C" fn collect_elem(e: *mut sys::nftnl_set_elem, data: *mut c_void) -> libc::c_int {
    // SAFETY: called by nftnl_set_elem_foreach with our Vec and a live element.
    unsafe {
        let out = &mut *(data as *mut Vec<ElemInfo>);
        let get = |attr: u16| -> Option<Vec<u8>> {
            if !sys::nftnl_set_elem_is_set(e, attr) {
                return None;
            }
            let mut len = 0u32;
            let p = sys::nftnl_set_elem_get(e, attr, &mut len);
            (!p.is_null())
                .then(|| std::slice::from_raw_parts(p as *const u8, len as usize).to_vec())
        };
        let verdict =
            sys::nftnl_set_elem_is_set(e, sys::NFTNL_SET_ELEM_VERDICT as u16).then(|| {
                let code =
                    sys::nftnl_set_elem_get_u32(e, sys::NFTNL_SET_ELEM_VERDICT as u16) as i32;
                let chain = if sys::nftnl_set_elem_is_set(e, sys::NFTNL_SET_ELEM_CHAIN as u16) {
                    cstr(sys::nftnl_set_elem_get_str(
                        e,
                        sys::NFTNL_SET_ELEM_CHAIN as u16,
                    ))
                } else {
                    String::new()
                };
                (code, chain)
            });
        let comment = get(NFTNL_SET_ELEM_USERDATA)
            .map(|u| parse_udata_comment(&u, UDATA_COMMENT))
            .unwrap_or_default();
        out.push(ElemInfo {
            key: get(sys::NFTNL_SET_ELEM_KEY as u16).unwrap_or_default(),
            key_end: get(NFTNL_SET_ELEM_KEY_END),
            data: get(sys::NFTNL_SET_ELEM_DATA as u16),
            verdict,
            comment,
        });
    }
    0
}
