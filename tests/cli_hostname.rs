//! `--hostname`: a jail sandbox's own hostname, in its UTS namespace,
//! /etc/hostname, /etc/hosts and $HOSTNAME, kept across stop/start; a bad
//! name or another backend is refused in one line with nothing recorded.

mod cli_support;

use cli_support::Alcove;

#[test]
fn a_sandbox_takes_the_hostname_it_is_given() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    a.ok(&["create", "hn", "--rootfs", &rootfs, "--hostname", "web.example"]);
    let names = "hostname; cat /etc/hostname; grep -c web.example /etc/hosts; echo $HOSTNAME";
    let expected = "web.example\nweb.example\n1\nweb.example\n";
    assert_eq!(a.ok(&["exec", "hn", "--", "sh", "-c", names]), expected);
    assert_eq!(a.inspect("hn")["config"]["jail"]["hostname"], "web.example");
    // Kept with the sandbox: a restart has the same name.
    a.ok(&["stop", "hn"]);
    a.ok(&["start", "hn"]);
    assert_eq!(a.ok(&["exec", "hn", "--", "sh", "-c", names]), expected);

    // Without the option the hostname is the sandbox name.
    a.ok(&["create", "plain", "--rootfs", &rootfs]);
    assert_eq!(a.ok(&["exec", "plain", "--", "hostname"]), "plain\n");
}

#[test]
fn a_bad_hostname_or_backend_is_refused_and_nothing_is_recorded() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    a.run(&["create", "bad", "--rootfs", &rootfs, "--hostname", "web-.example"])
        .assert_error("hostname \"web-.example\" has a label that starts or ends with '-'");
    a.run(&["create", "bad", "--rootfs", &rootfs, "--hostname", "web_1"])
        .assert_error("hostname \"web_1\" may contain only letters, digits, '-' and '.'");
    a.run(&["create", "bad", "--rootfs", &rootfs, "--backend", "krun", "--hostname", "web"])
        .assert_error("--hostname needs the jail backend");
    assert!(a.ps_entry("bad").is_none(), "nothing recorded");
}
