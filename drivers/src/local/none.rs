//! `none`: a sandbox with its loopback interface up and nothing else, like Docker's
//! `--network none`.

use engine_core::driver::{Capabilities, Driver, Handoff, JoinInfo, Op};
use engine_core::netlink::Netlink;
use engine_core::netns::Netns;
use engine_core::{
    AttachmentKey, Drift, Endpoint, EndpointSpec, ErrorKind, Network, NetworkSpec, Options, Result,
    ResultExt, Sandbox,
};

pub struct NoneDriver;

impl Driver for NoneDriver {
    fn name(&self) -> &'static str {
        "none"
    }

    fn capabilities(&self) -> Capabilities {
        super::capabilities()
    }

    fn validate(&self, spec: &NetworkSpec) -> Result<Options> {
        super::validate("none", "only a loopback interface", spec)
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

    /// Brings the sandbox's loopback up: a new namespace has it down, and programs that talk to
    /// themselves over 127.0.0.1 expect it.
    fn join(&self, _op: &mut Op, _n: &Network, _e: &Endpoint, sb: &Sandbox) -> Result<JoinInfo> {
        let ns = Netns::open(&sb.netns_path)
            .with_context(|| format!("container namespace {}", sb.netns_path.display()))?;
        Netlink::in_netns(&ns)?.set_up("lo")?;
        Ok(JoinInfo::default())
    }

    /// The loopback stays as it is: other networks of the same sandbox may still use it.
    fn leave(&self, _op: &mut Op, _net: &Network, _ep: &Endpoint) -> Result<()> {
        Ok(())
    }

    fn check(&self, _host: &Netlink, _net: &Network, ep: &Endpoint) -> Result<Vec<Drift>> {
        let Some(sb) = &ep.sandbox else {
            return Ok(Vec::new());
        };
        let subject = format!("loopback in {}", sb.netns_path.display());
        let ns = match Netns::open(&sb.netns_path) {
            Ok(ns) => ns,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Ok(vec![Drift {
                    subject,
                    problem: "the namespace is gone".into(),
                }])
            }
            Err(e) => return Err(e),
        };
        match Netlink::in_netns(&ns)?.link_by_name("lo")? {
            Some(lo) if lo.is_up() => Ok(Vec::new()),
            _ => Ok(vec![Drift {
                subject,
                problem: "down".into(),
            }]),
        }
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
