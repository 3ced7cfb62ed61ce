//! Every listed scenario on real VMs, one test each, as `vmcheck run NAME` runs it: it must
//! pass with every plan step (subtest) ok. The scenarios assert the plans' expectations
//! themselves (fio's typed results, lsblk, the target answering); this checks none was skipped.

use vmcheck::scenarios::{self, RunOptions};

/// Runs the scenarios `names` (a chain's cases together) and checks each passed with at least
/// `min_steps` subtests, all ok.
async fn passes(names: &[&str], min_steps: usize) {
    let chosen = scenarios::select(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let outcomes = scenarios::run_many(&chosen, &RunOptions::default()).await;
    let ran: Vec<_> = outcomes.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(ran, names, "every case runs, in order");
    for o in &outcomes {
        assert!(o.error.is_none(), "{} failed: {}", o.name, o.error.as_deref().unwrap_or_default());
        let steps: Vec<_> = o.subtests.iter().map(|s| (s.name.as_str(), s.error.is_none())).collect();
        assert!(steps.len() >= min_steps, "{}: only {} steps: {steps:?}", o.name, steps.len());
        assert!(steps.iter().all(|(_, ok)| *ok), "{}: {steps:?}", o.name);
    }
}

macro_rules! scenario_tests {
    ($($test:ident: [$($name:literal),+] >= $steps:literal;)+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                passes(&[$($name),+], $steps).await;
            }
        )+
    };
}

scenario_tests! {
    hotremove_blk_tc1: ["hotremove_blk_tc1"] >= 4;
    hotremove_blk_tc2: ["hotremove_blk_tc2"] >= 9;
    hotremove_blk_tc3: ["hotremove_blk_tc3"] >= 9;
    hotremove_blk_tc4: ["hotremove_blk_tc4"] >= 12;
    hotremove_blk_tc5: ["hotremove_blk_tc5"] >= 12;
    hotremove_scsi_tc1: ["hotremove_scsi_tc1"] >= 4;
    hotremove_scsi_tc2: ["hotremove_scsi_tc2"] >= 18;
    hotremove_scsi_tc3: ["hotremove_scsi_tc3"] >= 14;
    hotremove_scsi_tc4: ["hotremove_scsi_tc4"] >= 15;
    hotattach_tc1_to_tc4: ["hotattach_tc1", "hotattach_tc2", "hotattach_tc3", "hotattach_tc4"] >= 2;
    hotdetach_tc1_to_tc4: ["hotdetach_tc1", "hotdetach_tc2", "hotdetach_tc3", "hotdetach_tc4"] >= 4;
    disconnect: ["disconnect"] >= 5;
    reconnect: ["reconnect"] >= 5;
    ctrl_loss: ["ctrl_loss"] >= 6;
    nvmf_ports: ["nvmf_ports"] >= 8;
    nvmf_distributed: ["nvmf_distributed"] >= 7;
    multipath: ["multipath"] >= 7;
    lossy_link: ["lossy_link"] >= 4;
    balloon_basic: ["balloon_basic"] >= 12;
    balloon_cmdline: ["balloon_cmdline"] >= 3;
    balloon_power: ["balloon_power"] >= 6;
    balloon_hotplug: ["balloon_hotplug"] >= 9;
    balloon_migrate: ["balloon_migrate"] >= 6;
    lifecycle_and_balloon_fio: ["lifecycle_save_restore", "lifecycle_pause_fio", "lifecycle_migrate_fio", "balloon_fio"] >= 2;
}

/// Every listed scenario has a test here (or in its own file, as fio_nvme_basic does).
#[test]
fn every_listed_scenario_is_tested() {
    let source = include_str!("vm_scenarios.rs");
    for s in scenarios::all().iter().filter(|s| !s.hidden && s.name != "fio_nvme_basic") {
        assert!(source.contains(&format!("[\"{}\"", s.name)) || source.contains(&format!(", \"{}\"", s.name)), "no test runs {}", s.name);
    }
}
