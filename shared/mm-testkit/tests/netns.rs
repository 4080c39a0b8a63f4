//! Hosts in network namespaces: they reach each other on their LAN, not from the
//! machine's own namespace; a cut host reaches nobody until restored; everything is gone
//! when the LAN is dropped.

use std::process::Command;
use std::time::Duration;

use mm_shared::probe::wait_until;
use mm_shared::process::run_bounded;
use mm_testkit::Spawned;
use mm_testkit::netns::Lan;

/// Can `from` open a TCP connection to `addr:port`? (bash's /dev/tcp, inside `from`.)
fn reaches(lan: &Lan, from: &str, addr: &str, port: u16) -> bool {
    let mut command = lan.command(from, "timeout");
    command.args(["2", "bash", "-c", &format!("echo > /dev/tcp/{addr}/{port}")]);
    run_bounded(&mut command, Duration::from_secs(5)).success()
}

#[test]
fn hosts_talk_on_their_lan_only_and_a_cut_host_is_unreachable() {
    let lan = Lan::new(&["server", "client", "other"]).expect("a LAN (needs root and iproute2)");
    let server = lan.host("server").clone();
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut listener = lan.command("server", "python3");
    listener.args([
        "-c",
        &format!(
            "import socket, time\ns = socket.socket()\ns.bind(('{addr}', 4222))\ns.listen()\n\
             while True:\n    c, _ = s.accept()\n    c.close()\n"
        ),
    ]);
    let _listener = Spawned::start("listener", listener, &dir.path().join("listener.log")).expect("starts");
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || reaches(
            &lan, "client", &addr, 4222
        )),
        "the client reaches the server on the LAN"
    );
    assert!(reaches(&lan, "other", &addr, 4222));
    // Nothing of the LAN is in the machine's own namespace: no address, no link of it
    // (checked by looking, not by sending anything there).
    let own = run_bounded(Command::new("ip").args(["-o", "addr", "show"]), Duration::from_secs(5)).stdout;
    assert!(!own.contains("10.199.0."), "a LAN address in the machine's namespace: {own}");

    lan.cut("server").expect("cut");
    assert!(!reaches(&lan, "client", &addr, 4222), "a cut host is unreachable");
    lan.restore("server").expect("restore");
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || reaches(
            &lan, "client", &addr, 4222
        )),
        "a restored host is reachable again"
    );

    let names: Vec<String> =
        ["server", "client", "other"].iter().map(|h| lan.host(h).netns.clone()).collect();
    drop(_listener);
    drop(lan);
    let list = run_bounded(Command::new("ip").args(["netns", "list"]), Duration::from_secs(5)).stdout;
    for name in names {
        assert!(!list.contains(&name), "{name} is left after the drop: {list}");
    }
}
