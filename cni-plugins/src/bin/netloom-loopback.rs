//! The netloom-loopback CNI plugin: a thin entry point over the shared protocol library.
fn main() {
    engine_core::reaper::set_strategy(engine_core::reaper::Strategy::Process);
    std::process::exit(cni_plugins::run_process(
        &cni_plugins::plugins::loopback::LoopbackPlugin,
    ));
}
