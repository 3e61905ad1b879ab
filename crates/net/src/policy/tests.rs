use super::*;

fn rule(s: &str) -> Rule {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

fn policy(profile: Profile, rules: &[&str]) -> Policy {
    Policy { profile, rules: rules.iter().map(|r| rule(r)).collect() }
}

fn target<'a>(addr: &str, names: &'a [String], proto: Proto, port: Option<u16>) -> Target<'a> {
    Target { addr: addr.parse().unwrap(), names, proto, port }
}

#[test]
fn parses_every_destination_form() {
    assert_eq!(rule("allow:10.0.0.0/8").dest, Dest::Cidr("10.0.0.0/8".parse().unwrap()));
    assert_eq!(rule("deny:1.2.3.4").dest, Dest::Cidr("1.2.3.4/32".parse().unwrap()));
    assert_eq!(rule("deny:fd00::/8").dest, Dest::Cidr("fd00::/8".parse().unwrap()));
    assert_eq!(rule("allow:Example.COM.").dest, Dest::Domain("example.com".into()));
    assert_eq!(rule("allow:*.example.com").dest, Dest::Suffix("example.com".into()));
    assert_eq!(rule("deny:metadata").dest, Dest::Group(Group::Metadata));
    assert_eq!(rule("deny:link-local").dest, Dest::Group(Group::LinkLocal));
    let r = rule("allow:[2001:db8::/32]:tcp:443,8000-8100");
    assert_eq!(r.dest, Dest::Cidr("2001:db8::/32".parse().unwrap()));
    assert_eq!(r.proto, Some(Proto::Tcp));
    assert_eq!(r.ports, Some(Ports(vec![443..=443, 8000..=8100])));
    let r = rule("allow:example.com:53");
    assert_eq!((r.proto, r.ports), (None, Some(Ports(vec![53..=53]))));
    assert_eq!(rule("deny:public:icmp").proto, Some(Proto::Icmp));
}

#[test]
fn malformed_rules_give_one_clear_line() {
    let cases = [
        ("permit:1.2.3.4", "neither allow nor deny"),
        ("allow", "expected allow:DEST"),
        ("allow:", "missing destination"),
        ("allow:10.0.0.0/33", "bad CIDR"),
        ("allow:10.0.0.1/8", "host bits"),
        ("allow:300.1.1.1", "bad address"),
        ("allow:1.2.3.4:tcp:0", "bad port"),
        ("allow:1.2.3.4:tcp:70000", "bad port"),
        ("allow:1.2.3.4:tcp:90-80", "backwards"),
        ("allow:1.2.3.4:sctp:80", "not tcp, udp or icmp"),
        ("allow:1.2.3.4:icmp:80", "icmp has no ports"),
        ("allow:1.2.3.4:tcp:80:9", "too many"),
        ("allow:2001:db8::1:tcp:443", "brackets"),
        ("allow:[2001:db8::1", "unclosed"),
        ("allow:bad_-.example..com", "bad domain"),
        ("allow:*.", "bad domain"),
        ("allow:exa mple.com", "bad domain"),
        ("allow:1.2.3.4:", "empty field"),
    ];
    for (text, want) in cases {
        let err = text.parse::<Rule>().expect_err(text).to_string();
        assert!(err.contains(want), "{text}: {err}");
        assert!(!err.contains('\n'), "{text}: {err}");
        assert!(err.contains(text), "{text}: {err}");
    }
    assert!("everything".parse::<Profile>().unwrap_err().to_string().contains("\"everything\""));
}

#[test]
fn first_matching_rule_wins() {
    let p = policy(Profile::Public, &["deny:1.1.1.0/24:tcp:443", "allow:1.1.1.1"]);
    let d = p.decide(&target("1.1.1.1", &[], Proto::Tcp, Some(443)));
    assert!(!d.allowed);
    assert_eq!(d.by, DecidedBy::Rule { index: 0, text: "deny:1.1.1.0/24:tcp:443".into() });
    let d = p.decide(&target("1.1.1.1", &[], Proto::Tcp, Some(80)));
    assert!(d.allowed);
    assert_eq!(d.by, DecidedBy::Rule { index: 1, text: "allow:1.1.1.1".into() });
    let d = p.decide(&target("9.9.9.9", &[], Proto::Udp, Some(53)));
    assert_eq!(d, Decision { allowed: true, by: DecidedBy::Profile(Profile::Public) });
}

#[test]
fn profiles_allow_their_classes() {
    let cases = [
        (Profile::None, "1.1.1.1", false),
        (Profile::Public, "1.1.1.1", true),
        (Profile::Public, "10.0.0.1", false),
        (Profile::Public, "127.0.0.1", false),
        (Profile::Private, "10.0.0.1", true),
        (Profile::Private, "1.1.1.1", false),
        (Profile::Host, "127.0.0.1", true),
        (Profile::Host, "1.1.1.1", false),
        (Profile::All, "10.0.0.1", true),
        (Profile::All, "1.1.1.1", true),
        (Profile::All, "169.254.169.254", false),
    ];
    for (profile, addr, allowed) in cases {
        let d = policy(profile, &[]).decide(&target(addr, &[], Proto::Tcp, Some(80)));
        assert_eq!(d.allowed, allowed, "{profile:?} {addr}");
    }
}

#[test]
fn metadata_needs_a_rule_that_names_it() {
    let md = "169.254.169.254";
    for broad in ["allow:0.0.0.0/0", "allow:169.254.0.0/16", "allow:link-local"] {
        let d = policy(Profile::All, &[broad]).decide(&target(md, &[], Proto::Tcp, Some(80)));
        assert_eq!(d, Decision { allowed: false, by: DecidedBy::Metadata }, "{broad}");
    }
    for naming in ["allow:metadata", "allow:169.254.169.254", "allow:169.254.169.0/24"] {
        let d = policy(Profile::Public, &[naming]).decide(&target(md, &[], Proto::Tcp, Some(80)));
        assert!(d.allowed, "{naming}");
    }
    let names = vec!["metadata.google.internal".to_string()];
    let d =
        policy(Profile::Public, &["allow:metadata.google.internal"]).decide(&target(md, &names, Proto::Tcp, Some(80)));
    assert!(d.allowed);
}

#[test]
fn domain_rules_match_through_names() {
    let names = vec!["api.github.com".to_string()];
    let p = policy(Profile::None, &["allow:*.github.com:tcp:443"]);
    assert!(p.decide(&target("140.82.112.5", &names, Proto::Tcp, Some(443))).allowed);
    assert!(!p.decide(&target("140.82.112.5", &names, Proto::Tcp, Some(22))).allowed);
    assert!(!p.decide(&target("140.82.112.5", &[], Proto::Tcp, Some(443))).allowed);
    let exact = vec!["github.com".to_string()];
    assert!(!p.decide(&target("140.82.112.5", &exact, Proto::Tcp, Some(443))).allowed, "*.x does not match x");
    let tricky = vec!["evilgithub.com".to_string()];
    assert!(!p.decide(&target("1.2.3.4", &tricky, Proto::Tcp, Some(443))).allowed);
}

#[test]
fn names_are_decided_before_forwarding() {
    let p = policy(Profile::Public, &["deny:evil.example", "deny:*.ads.example:tcp", "allow:good.example"]);
    assert_eq!(p.decide_name("EVIL.example."), NameDecision::Denied(0));
    assert_eq!(p.decide_name("x.ads.example"), NameDecision::Undecided, "a restricted deny does not block resolution");
    assert_eq!(p.decide_name("good.example"), NameDecision::Allowed(2));
    assert_eq!(p.decide_name("other.example"), NameDecision::Undecided);
    assert_eq!(policy(Profile::None, &[]).decide_name("a.example"), NameDecision::Nothing);
    assert_eq!(policy(Profile::None, &["allow:1.1.1.1"]).decide_name("a.example"), NameDecision::Undecided);
}

#[test]
fn answer_filter_is_rebind_protection() {
    let name = vec!["app.example".to_string()];
    let public = policy(Profile::Public, &[]);
    assert!(public.may_allow("93.184.216.34".parse().unwrap(), &name));
    assert!(!public.may_allow("10.0.0.5".parse().unwrap(), &name), "a public name resolving to a private address");
    assert!(!public.may_allow("127.0.0.1".parse().unwrap(), &name));
    assert!(!public.may_allow("169.254.169.254".parse().unwrap(), &name));
    let by_name = policy(Profile::Public, &["allow:app.example"]);
    assert!(by_name.may_allow("10.0.0.5".parse().unwrap(), &name));
    let by_cidr = policy(Profile::Public, &["allow:10.0.0.0/8:tcp:443"]);
    assert!(by_cidr.may_allow("10.0.0.5".parse().unwrap(), &name));
    let denied = policy(Profile::Public, &["deny:93.184.216.0/24"]);
    assert!(!denied.may_allow("93.184.216.34".parse().unwrap(), &name));
}
