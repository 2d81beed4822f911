//! `netloom-ipvlan`: the reference ipvlan plugin's keys (`master`, `mode` l2/l3/l3s, `mtu`,
//! `linkInContainer`, `ipam`) plus netloom's (`flag` bridge/private/vepa, `hostShim`,
//! `internal`, VLAN masters `<if>.<vid>`), on the same code as `netloom-macvlan`.

use drivers::vlan::Kind;

use crate::plugins::macvlan::VlanPlugin;

/// `netloom-ipvlan`.
pub const IPVLAN: VlanPlugin = VlanPlugin::new(Kind::Ipvlan, "netloom-ipvlan");
