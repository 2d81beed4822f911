//! The netloom-vxlan CNI plugin: a thin entry point over the shared protocol library.
fn main() {
    // A detached reaper started by an earlier DEL does its job and exits here.
    engine_core::reaper::run_if_requested();
    engine_core::reaper::set_strategy(engine_core::reaper::Strategy::Process);
    std::process::exit(cni_plugins::run_process(
        &cni_plugins::plugins::vxlan::VxlanPlugin,
    ));
}
