//! The netloom-ipvlan CNI plugin: a thin entry point over the shared protocol library.
fn main() {
    drivers::vlan::reaper::set_mode(drivers::vlan::reaper::Mode::Process);
    std::process::exit(cni_plugins::run_process(
        &cni_plugins::plugins::ipvlan::IPVLAN,
    ));
}
