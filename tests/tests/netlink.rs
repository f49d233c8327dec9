//! Route, rule and neighbour attributes read through netlink, in a namespace of our own:
//! tables beyond 255, every route type Calico uses, metrics and the route MTU attribute.

use std::net::IpAddr;

use agent::observed::RouteType;
use calico_conventions::PROTO_CALICO;
use integration_tests::{NetnsGuard, ip, observe, unique};

#[test]
fn routes_of_every_table_and_rules_are_read() {
    let ns = unique("nl");
    let _guard = NetnsGuard::new(&[&ns]);
    ip(
        &ns,
        &["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
    );
    ip(&ns, &["link", "set", "d1", "up"]);
    ip(&ns, &["link", "set", "d0", "mtu", "1400", "up"]);
    ip(&ns, &["addr", "add", "192.0.2.10/24", "dev", "d0"]);
    ip(
        &ns,
        &[
            "route",
            "add",
            "198.51.100.0/26",
            "via",
            "192.0.2.1",
            "dev",
            "d0",
            "onlink",
            "proto",
            "80",
            "metric",
            "7",
            "mtu",
            "1380",
        ],
    );
    ip(
        &ns,
        &["route", "add", "blackhole", "203.0.113.0/26", "proto", "80"],
    );
    ip(
        &ns,
        &["route", "add", "10.1.0.0/16", "dev", "d0", "table", "1000"],
    );
    ip(&ns, &["route", "add", "throw", "10.2.0.0/26", "table", "1"]);
    ip(
        &ns,
        &[
            "rule",
            "add",
            "not",
            "from",
            "all",
            "fwmark",
            "0x200000/0x200000",
            "lookup",
            "1",
            "priority",
            "99",
        ],
    );
    ip(
        &ns,
        &[
            "neigh",
            "add",
            "192.0.2.1",
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            "d0",
            "nud",
            "permanent",
        ],
    );

    let obs = observe(&ns, "n");
    let d0 = obs.link("d0").expect("veth link");
    assert_eq!(
        (d0.kind.as_deref(), d0.mtu, d0.admin_up),
        (Some("veth"), 1400, true)
    );

    let via = obs
        .routes
        .iter()
        .find(|r| r.destination.to_string() == "198.51.100.0/26")
        .expect("via route");
    assert_eq!(
        via.gateway,
        Some("192.0.2.1".parse::<IpAddr>().expect("ip"))
    );
    assert_eq!(
        (via.protocol, via.metric, via.mtu, via.onlink),
        (PROTO_CALICO, 7, Some(1380), true)
    );
    assert_eq!(
        via.display(),
        "198.51.100.0/26 via 192.0.2.1 dev d0 proto 80 onlink metric 7 mtu 1380"
    );

    let bh = obs
        .routes
        .iter()
        .find(|r| r.kind == RouteType::Blackhole)
        .expect("blackhole");
    assert_eq!(
        (
            bh.destination.to_string().as_str(),
            bh.protocol,
            bh.dev.as_deref()
        ),
        ("203.0.113.0/26", 80, None)
    );

    let big = obs
        .routes
        .iter()
        .find(|r| r.table == 1000)
        .expect("table 1000 route");
    assert_eq!(big.destination.to_string(), "10.1.0.0/16");
    let throw = obs
        .routes
        .iter()
        .find(|r| r.table == 1)
        .expect("table 1 route");
    assert_eq!(throw.kind, RouteType::Throw);

    let rule = obs
        .rules
        .iter()
        .find(|r| r.priority == 99)
        .expect("fwmark rule");
    assert!(rule.invert);
    assert_eq!(
        (rule.fwmark, rule.fwmask, rule.table),
        (Some(0x20_0000), Some(0x20_0000), 1)
    );
    assert_eq!(
        rule.display(),
        "99:\tnot from all fwmark 0x200000/0x200000 lookup 1"
    );

    let n = obs
        .neighbours
        .iter()
        .find(|n| n.dev == "d0")
        .expect("neighbour");
    assert_eq!(
        (n.lladdr.as_deref(), n.is_permanent()),
        (Some("02:00:00:00:00:01"), true)
    );
    let addr = obs.addresses_of("d0").next().expect("address");
    assert_eq!(addr.address.to_string(), "192.0.2.10/24");
}
