//! The plugins themselves: each binary in `src/bin/` is `run_process(&Plugin)`.

pub mod bridge;
pub mod context;
pub mod hostlocal;
pub mod ipam;
pub mod ipvlan;
pub mod loopback;
pub mod macvlan;
pub mod mirror;
pub mod portmap;

/// CNI_ARGS keys the main plugins understand: the Kubernetes ones runtimes always send, plus
/// static `IP` and `MAC`.
pub const MAIN_PLUGIN_ARGS: &[&str] = &[
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
    "IP",
    "MAC",
];
