//! The netloom-portmap CNI plugin: a thin entry point over the shared protocol library.
fn main() {
    std::process::exit(cni_plugins::run_process(
        &cni_plugins::plugins::portmap::PortmapPlugin,
    ));
}
