//! The machine API against one real VM: exec results, timeouts and their errors, waits,
//! console, reboot, crash and restart, shutdown.

mod common;

use std::time::Duration;

use common::{driver, err_text, SHORT};
use vmcheck::config::{NodeSpec, Role};
use vmcheck::machine::is_timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_api_on_a_real_vm() {
    let d = driver(vec![NodeSpec::new("machine", Role::Target, 1)]).await;
    d.start_all().await.unwrap();
    let m = d.machine("machine").unwrap();

    // Exit status, stdout and stderr come back exactly, including non-ASCII and no newline.
    let out = m.execute("printf 'a\\nb  '; printf 'é€' >&2; exit 3").await.unwrap();
    assert_eq!((out.status, out.stdout.as_str(), out.stderr.as_str()), (3, "a\nb  ", "é€"));
    let out = m.execute("kill -TERM $$").await.unwrap();
    assert_eq!((out.status, out.signal), (143, Some(15)));
    let big = m.succeed("head -c 300000 /dev/zero | tr '\\0' x").await.unwrap();
    assert_eq!(big.len(), 300000);
    assert_eq!(m.succeed("echo hello").await.unwrap(), "hello\n");
    let failed = err_text(m.succeed("echo out; echo err >&2; exit 7").await);
    assert!(
        failed.contains("status 7") && failed.contains("out") && failed.contains("err"),
        "{failed}"
    );
    let out = m.fail("false").await.unwrap();
    assert_eq!(out.status, 1);
    assert!(err_text(m.fail("true").await).contains("should have failed"));

    // A command that never exits is bounded by its timeout; the error says so and shows the
    // console tail.
    m.succeed("echo console-marker-before-timeout > /dev/console").await.unwrap();
    let e = m.succeed_with_timeout("sleep 600", SHORT).await.unwrap_err();
    assert!(is_timeout(&e), "{e:#}");
    let text = format!("{e:#}");
    assert!(text.contains("did not finish within 3s") && text.contains("sleep 600"), "{text}");
    assert!(
        text.contains("last 20 console lines") && text.contains("console-marker-before-timeout"),
        "{text}"
    );
    // A command that leaves a child holding stdout is bounded too, and the child is killed.
    let e = m.execute_with_timeout("sleep 555 & echo started", SHORT).await.unwrap_err();
    assert!(is_timeout(&e), "{e:#}");
    assert!(format!("{e:#}").contains("started"), "partial output is kept: {e:#}");
    m.wait_until_fails("pgrep -f 'sleep 555'", Duration::from_secs(10)).await.unwrap();

    // Waits.
    m.succeed("(sleep 2; touch /tmp/ready) >/dev/null 2>&1 &").await.unwrap();
    m.wait_for_file("/tmp/ready", Duration::from_secs(30)).await.unwrap();
    let e = m.wait_for_file("/tmp/never", Duration::from_secs(2)).await.unwrap_err();
    assert!(is_timeout(&e) && format!("{e:#}").contains("test -e /tmp/never"), "{e:#}");
    m.succeed("setsid nc -l -p 5555 </dev/null >/dev/null 2>&1 &").await.unwrap();
    m.wait_for_open_port(5555, Duration::from_secs(30)).await.unwrap();
    assert!(is_timeout(&m.wait_for_open_port(5556, Duration::from_secs(2)).await.unwrap_err()));
    assert_eq!(m.wait_until_succeeds("cat /tmp/ready; echo ok", SHORT).await.unwrap(), "ok\n");
    m.succeed("echo 'console-marker-42' > /dev/console").await.unwrap();
    assert_eq!(
        m.wait_for_console_text(r"console-marker-\d+", Duration::from_secs(10)).await.unwrap(),
        "console-marker-42"
    );
    assert!(m.console_contains("console-marker-42").unwrap());
    let e = m.wait_for_console_text("never-printed", Duration::from_secs(1)).await.unwrap_err();
    assert!(
        format!("{e:#}").contains("never-printed")
            && format!("{e:#}").contains("last 20 console lines"),
        "{e:#}"
    );

    // Files and memory through the agent.
    let qga = m.qga().await.unwrap();
    qga.write_file("/tmp/f", b"bytes \x00\xff end").await.unwrap();
    assert_eq!(qga.read_file("/tmp/f").await.unwrap(), b"bytes \x00\xff end");
    let mem = m.memory_stats().await.unwrap();
    assert!(mem.total_kib > 300_000 && mem.total_kib < 600_000, "{mem:?}");

    // Reboot: RAM state is gone, the machine answers again.
    m.reboot().await.unwrap();
    m.fail("test -e /tmp/ready").await.unwrap();
    // Crash, then start again.
    m.crash().await.unwrap();
    assert!(!m.is_up().await);
    assert!(err_text(m.succeed("true").await).contains("not running"));
    m.wait_for_agent().await.unwrap();
    m.succeed("true").await.unwrap();
    // Clean shutdown ends QEMU.
    let pid = m.pid().await.unwrap();
    m.shutdown().await.unwrap();
    assert!(!vmcheck::process::is_alive(pid));
}

/// A user's own control plane, reached through a forwarded guest port: the address comes once
/// something listens; a port nothing listens on, or one the machine does not forward, is an
/// error that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_port_is_reached_once_something_listens_and_named_when_nothing_does() {
    use std::io::{Read, Write};
    use vmcheck::recipe::Recipe;
    // busybox's nc answers every connection with a line (its own "control plane"); 7001 has
    // no listener.
    let recipe = Recipe::new("forwards")
        .service("hello", "while true; do echo hello-from-the-guest | nc -l -p 7000; done")
        .forward_port(7000)
        .forward_port(7001);
    let d = driver(vec![NodeSpec::new("machine", Role::Initiator, 2).with_recipe(recipe)]).await;
    d.start_all().await.unwrap();
    let m = d.machine("machine").unwrap();

    let addr = m.wait_for_forwarded_port(7000, Duration::from_secs(20)).await.unwrap();
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = conn.write_all(b"\n");
    let mut got = String::new();
    let _ = conn.read_to_string(&mut got);
    assert!(got.contains("hello-from-the-guest"), "{got:?}");

    let e = err_text(m.wait_for_forwarded_port(7001, SHORT).await);
    assert!(e.contains("nothing in machine listens on the forwarded TCP port 7001"), "{e}");
    let e = err_text(m.wait_for_forwarded_port(7002, SHORT).await);
    assert!(e.contains("no forward of guest port 7002") && e.contains("[7000, 7001]"), "{e}");
}

/// What the NixOS driver's users have, on one VM: files in and out (binary, over a MiB, mode
/// kept, parents created), a port closing, the human monitor, QMP events, systemd refused on a
/// default image, `retry`, and a shutdown the guest does by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nixos_driver_operations_on_a_real_vm() {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    let d = driver(vec![NodeSpec::new("machine", Role::Target, 1)]).await;
    d.start_all().await.unwrap();
    let m = d.machine("machine").unwrap();

    // Every byte value, 3 MiB and a bit: more than one agent chunk, not a multiple of one.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..3 * vmcheck::machine::FILE_CHUNK + 12345)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    let host = tempfile::tempdir().unwrap();
    let src = host.path().join("blob.bin");
    std::fs::write(&src, &data).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
    m.copy_from_host(&src, "/tmp/parity/deep/blob.bin").await.unwrap();
    let sum = hex::encode(Sha256::digest(&data));
    let guest = m
        .succeed("sha256sum /tmp/parity/deep/blob.bin; stat -c %a /tmp/parity/deep/blob.bin")
        .await
        .unwrap();
    assert_eq!(guest, format!("{sum}  /tmp/parity/deep/blob.bin\n640\n"));
    let back =
        m.copy_from_machine("/tmp/parity/deep/blob.bin", host.path().join("out")).await.unwrap();
    assert_eq!(back, host.path().join("out/blob.bin"));
    assert!(std::fs::read(&back).unwrap() == data, "the file came back changed");
    let e = err_text(m.copy_from_machine("/tmp/no/such/file", host.path()).await);
    assert!(e.contains("/tmp/no/such/file") && e.contains("last 20 console lines"), "{e}");
    let e = err_text(m.copy_from_host(host.path(), "/tmp/x").await);
    assert!(e.contains("is not a regular file"), "{e}");

    // A port that closes.
    m.succeed("setsid nc -l -p 5557 </dev/null >/dev/null 2>&1 & echo $! > /tmp/nc.pid")
        .await
        .unwrap();
    m.wait_for_open_port(5557, Duration::from_secs(30)).await.unwrap();
    let e = m.wait_for_closed_port(5557, SHORT).await.unwrap_err();
    assert!(is_timeout(&e) && format!("{e:#}").contains("TCP port 5557 to be closed"), "{e:#}");
    m.succeed("kill $(cat /tmp/nc.pid)").await.unwrap();
    m.wait_for_closed_port(5557, Duration::from_secs(30)).await.unwrap();

    // The human monitor, and the QMP events its commands cause, read as a queue.
    let status = m.send_monitor_command("info status").await.unwrap();
    assert!(status.contains("VM status: running"), "{status:?}");
    m.send_monitor_command("stop").await.unwrap();
    m.send_monitor_command("cont").await.unwrap();
    let stop = m.wait_for_qmp_event("STOP", Duration::from_secs(30)).await.unwrap();
    assert_eq!(stop["event"], "STOP");
    let resume = m.wait_for_qmp_event("RESUME", Duration::from_secs(30)).await.unwrap();
    assert!(resume["timestamp"].as_f64() >= stop["timestamp"].as_f64(), "{stop} {resume}");
    // The STOP is consumed: the next one is awaited, not found again.
    let e = m.wait_for_qmp_event("STOP", Duration::from_secs(1)).await.unwrap_err();
    assert!(is_timeout(&e) && format!("{e:#}").contains("waiting for the QMP event STOP"), "{e:#}");
    let unknown = m.send_monitor_command("no-such-command").await.unwrap();
    assert!(unknown.contains("unknown command"), "{unknown:?}");

    // systemd: not on a default image, and the error says what to use.
    let e = err_text(m.wait_for_unit("multi-user.target", SHORT).await);
    assert!(e.contains("needs systemd") && e.contains("wait_for_open_port"), "{e}");

    // retry: a value once the condition holds; a bounded, named failure otherwise.
    m.succeed("(sleep 1; echo 7 > /tmp/seven) >/dev/null 2>&1 &").await.unwrap();
    let seven = m
        .retry("/tmp/seven holds a number", Duration::from_secs(30), || async {
            let out = m.execute("cat /tmp/seven").await?;
            Ok(out.stdout.trim().parse::<u32>().ok())
        })
        .await
        .unwrap();
    assert_eq!(seven, 7);
    let e =
        m.retry("never", Duration::from_secs(1), || async { Ok(None::<()>) }).await.unwrap_err();
    assert!(is_timeout(&e) && format!("{e:#}").contains("expected never within 1s"), "{e:#}");

    // A poweroff by the guest itself ends QEMU.
    m.spawn(&["poweroff".to_string()]).await.unwrap();
    m.wait_for_shutdown(Duration::from_secs(60)).await.unwrap();
    assert!(!m.is_up().await);
    d.kill_all().await;
}
