//! The netloom-portmap CNI plugin: a thin entry point over the shared protocol library.
fn main() {
    // Slow kernel clean-up (the firewall socket's release after DEL) may outlive this process.
    engine_core::reaper::set_strategy(engine_core::reaper::Strategy::Process);
    std::process::exit(cni_plugins::run_process(
        &cni_plugins::plugins::portmap::PortmapPlugin,
    ));
}
