//! The netloom-macvlan CNI plugin: a thin entry point over the shared protocol library.
fn main() {
    // A copy of this binary deletes retired container interfaces in the background (see
    // drivers::vlan::reaper): that copy stops here.
    if let Some(code) = drivers::vlan::reaper::run_if_asked() {
        std::process::exit(code);
    }
    drivers::vlan::reaper::set_mode(drivers::vlan::reaper::Mode::Process);
    std::process::exit(cni_plugins::run_process(
        &cni_plugins::plugins::macvlan::MACVLAN,
    ));
}
