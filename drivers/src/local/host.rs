//! `host`: the container shares the host's network namespace, like Docker's `--network host`.
//! Nothing is created; the endpoint records that the sandbox is the host's, and joining any
//! other namespace is refused (it would silently give that container no network at all).

use engine_core::driver::{Capabilities, Driver, Handoff, JoinInfo, Op};
use engine_core::netlink::Netlink;
use engine_core::netns::Netns;
use engine_core::{
    AttachmentKey, Drift, Endpoint, EndpointSpec, Error, Network, NetworkSpec, Options, Result,
    ResultExt, Sandbox,
};

pub struct HostDriver;

impl Driver for HostDriver {
    fn name(&self) -> &'static str {
        "host"
    }

    fn capabilities(&self) -> Capabilities {
        super::capabilities()
    }

    fn validate(&self, spec: &NetworkSpec) -> Result<Options> {
        super::validate("host", "the host's own interfaces", spec)
    }

    fn create_network(&self, _op: &mut Op, _net: &Network) -> Result<()> {
        Ok(())
    }

    fn delete_network(&self, _op: &mut Op, _net: &Network) -> Result<()> {
        Ok(())
    }

    fn create_endpoint(&self, _op: &mut Op, _n: &Network, _s: &EndpointSpec) -> Result<Handoff> {
        Ok(super::no_link())
    }

    fn delete_endpoint(&self, _op: &mut Op, _net: &Network, _ep: &Endpoint) -> Result<()> {
        Ok(())
    }

    fn join(&self, op: &mut Op, net: &Network, _e: &Endpoint, sb: &Sandbox) -> Result<JoinInfo> {
        let host = match op.host_netns() {
            Some(p) => Netns::open(p)?,
            None => Netns::current()?,
        };
        let theirs = Netns::open(&sb.netns_path)
            .with_context(|| format!("container namespace {}", sb.netns_path.display()))?;
        if theirs.inode()? != host.inode()? {
            return Err(Error::InvalidConfig(format!(
                "network {}: the host driver is for containers that share the host's namespace; {} is another namespace",
                net.name,
                sb.netns_path.display()
            )));
        }
        Ok(JoinInfo::default())
    }

    fn leave(&self, _op: &mut Op, _net: &Network, _ep: &Endpoint) -> Result<()> {
        Ok(())
    }

    fn check(&self, _host: &Netlink, _net: &Network, _ep: &Endpoint) -> Result<Vec<Drift>> {
        Ok(Vec::new())
    }

    fn gc(
        &self,
        _op: &mut Op,
        _n: &Network,
        _live: &[AttachmentKey],
    ) -> Result<Vec<engine_core::Error>> {
        Ok(Vec::new())
    }
}
