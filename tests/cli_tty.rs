//! `alcove run -it` driven through a pseudo-terminal: the prompt appears, a
//! command runs, a resize reaches the guest, Ctrl-C goes to the sandboxed
//! process (not to alcove), the exit code comes back and the terminal is
//! restored afterwards.

mod cli_support;

use cli_support::{bin, Alcove};
use expectrl::{Eof, Regex, Session};
use std::process::Command;
use std::time::Duration;

#[test]
fn an_interactive_session_through_a_pty() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    // A host shell runs alcove, then prints its exit code and the terminal
    // mode, so the test can see that the terminal was restored.
    let script = format!("{} run -it --name tty --rootfs {rootfs} -- sh; echo \"rc=$?\"; stty -a", bin());
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .env("ALCOVE_HOME", &a.home)
        .env("ALCOVE_RUNTIME_DIR", &a.runtime)
        .env("NO_COLOR", "1")
        .env("TERM", "dumb");
    let mut s = Session::spawn(cmd).expect("spawn in a pty");
    s.set_expect_timeout(Some(Duration::from_secs(30)));

    // Prompt, then a command.
    s.expect(Regex(r"# ")).expect("the guest shell's prompt");
    s.send_line("echo $((6 * 7))").expect("send");
    s.expect("42").expect("the command's output");
    s.expect(Regex(r"# ")).expect("prompt again");

    // The host terminal is raw: typed text is echoed once, by the guest's
    // terminal (a cooked host terminal would echo it a second time).
    s.send_line("echo marker-$((1 + 1))").expect("send");
    let m = s.expect("marker-2").expect("the command's output");
    let typed = String::from_utf8_lossy(m.before()).matches("marker-$((1 + 1))").count();
    assert_eq!(typed, 1, "input echoed {typed} times: {:?}", String::from_utf8_lossy(m.before()));
    s.expect(Regex(r"# ")).expect("prompt again");

    // The guest sees the terminal size, and a resize.
    s.send_line("stty size").expect("send");
    s.expect(Regex(r"\d+ \d+")).expect("initial size");
    s.get_process_mut().set_window_size(100, 40).expect("resize");
    // The resize travels CLI → relay → agent on its own; ask until it shows.
    let mut seen = String::new();
    for _ in 0..50 {
        s.send_line("stty size").expect("send");
        let m = s.expect(Regex(r"\r?\n(\d+ \d+)\r?\n")).expect("a size");
        seen = String::from_utf8_lossy(m.get(1).expect("the size")).into_owned();
        if seen == "40 100" {
            break;
        }
    }
    assert_eq!(seen, "40 100", "the new size never reached the guest");

    // Ctrl-C interrupts the sandboxed command, not alcove.
    s.send_line("echo arm$((1 + 1)); sleep 30; echo after-sleep").expect("send");
    s.expect("arm2").expect("the command line runs");
    s.send("\x03").expect("send ^C");
    s.expect(Regex(r"# ")).expect("prompt after ^C");
    s.send_line("echo still-here").expect("send");
    s.expect("still-here").expect("the session survived ^C");
    s.expect(Regex(r"# ")).expect("prompt again");
    // Ctrl-\ too.
    s.send_line("echo arm$((2 + 1)); sleep 30; echo after-sleep").expect("send");
    s.expect("arm3").expect("the command line runs");
    s.send("\x1c").expect("send ^\\");
    s.expect(Regex(r"# ")).expect("prompt after ^\\");
    s.send_line("echo survived-quit").expect("send");
    s.expect("survived-quit").expect("the session survived ^\\");

    // Leaving with a code; the host terminal is cooked again afterwards.
    s.send_line("exit 5").expect("send");
    s.expect("rc=5").expect("alcove's exit code");
    let m = s.expect(Eof).expect("the host shell ends");
    let stty = String::from_utf8_lossy(m.get(0).unwrap_or_default()).to_string();
    assert!(stty.contains(" icanon") && stty.contains(" echo"), "the terminal was left raw: {stty}");
    assert!(!stty.contains("-icanon"), "the terminal was left raw: {stty}");

    // The named sandbox is kept, stopped.
    assert_eq!(a.status("tty"), "Stopped");
}
