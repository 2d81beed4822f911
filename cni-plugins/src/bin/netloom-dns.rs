//! The netloom-dns CNI plugin: container names on their network, served by netloom-dnsd.
fn main() {
    std::process::exit(cni_plugins::run_process(
        &cni_plugins::plugins::dns::DnsPlugin,
    ));
}
