"""The reload plan, without sockets: which listeners are kept, opened and closed, which roles start and stop."""

from __future__ import annotations

from dataclasses import replace

from metadata_proxy.config import RoleConfig, ServeConfig
from metadata_proxy.model import RoleSpec
from metadata_proxy.reload_plan import Bound, ReloadPlan, plan_reload

ONE = "arn:aws:iam::111111110001:role/role-01"
FOUR = "arn:aws:iam::111111110001:role/role-04"
FIVE = "arn:aws:iam::111111110001:role/role-05"


def role(arn: str, port: int, **kwargs) -> RoleConfig:
    return RoleConfig(role_arn=arn, port=port, role_session_name="s", **kwargs)


def config(*roles: RoleConfig, **kwargs) -> ServeConfig:
    return ServeConfig(roles=roles, region="eu-west-1", **kwargs)


def running(cfg: ServeConfig, ports: dict[str, int] | None = None) -> tuple[list[Bound], frozenset[RoleSpec]]:
    """The listeners and refresher keys of a daemon running cfg (port 0 got the port named in ports)."""
    bound = [Bound(r, (ports or {}).get(r.name, r.port)) for r in cfg.roles]
    return bound, frozenset(RoleSpec.of(r, None, "eu-west-1") for r in cfg.roles)


def planned(old: ServeConfig, new: ServeConfig) -> ReloadPlan:
    bound, refreshing = running(old)
    return plan_reload(old, bound, new, None, refreshing)


def test_unchanged_configuration_keeps_everything() -> None:
    old = config(role(ONE, 9001), role(FOUR, 9002))
    plan = planned(old, old)
    assert plan.keep == ((9001, old.roles[0]), (9002, old.roles[1]))
    assert plan.open == () and plan.close == () and plan.start == frozenset() and plan.stop == frozenset()
    assert plan.restart_only == ()


def test_renamed_role_on_the_same_port_takes_the_listener_over() -> None:
    """Changing role_arn (so the name) but not the port: the held port is reused, never bound again."""
    old = config(role(ONE, 9001))
    new = config(role(FOUR, 9001))
    plan = planned(old, new)
    assert plan.keep == ((9001, new.roles[0]),) and plan.open == () and plan.close == ()
    assert {spec.role_arn for spec in plan.start} == {FOUR}
    assert {spec.role_arn for spec in plan.stop} == {ONE}


def test_swapped_ports_swap_listeners_without_binding() -> None:
    old = config(role(ONE, 9001), role(FOUR, 9002))
    new = config(role(ONE, 9002), role(FOUR, 9001))
    plan = planned(old, new)
    assert dict(plan.keep) == {9002: new.roles[0], 9001: new.roles[1]}
    assert plan.open == () and plan.close == () and plan.start == frozenset() and plan.stop == frozenset()


def test_port_zero_keeps_the_listener_its_name_had() -> None:
    old = config(role(ONE, 0))
    bound, refreshing = running(old, {"role-01": 41000})
    new = config(role(ONE, 0, duration_seconds=1800))
    plan = plan_reload(old, bound, new, None, refreshing)
    assert plan.keep == ((41000, new.roles[0]),) and plan.open == () and plan.close == ()
    assert {spec.duration_seconds for spec in plan.start} == {1800}  # a changed input is a new key
    assert {spec.duration_seconds for spec in plan.stop} == {3600}


def test_added_and_removed_roles() -> None:
    old = config(role(ONE, 9001), role(FOUR, 9002))
    new = config(role(ONE, 9001), role(FIVE, 9003))
    plan = planned(old, new)
    assert plan.keep == ((9001, new.roles[0]),)
    assert plan.open == (new.roles[1],)
    assert plan.close == (9002,)
    assert {spec.role_arn for spec in plan.start} == {FIVE}
    assert {spec.role_arn for spec in plan.stop} == {FOUR}


def test_a_moved_role_opens_its_new_port_and_closes_the_old() -> None:
    old = config(role(ONE, 9001))
    new = config(role(ONE, 9005))
    plan = planned(old, new)
    assert plan.open == (new.roles[0],) and plan.close == (9001,) and plan.keep == ()
    assert plan.start == frozenset() and plan.stop == frozenset()  # same AssumeRole inputs: same task


def test_restart_only_settings_are_kept_and_named() -> None:
    old = config(role(ONE, 9001))
    new = replace(config(role(ONE, 9001)), host="::1", hop_limit=2, admin_port=9100, log_format="json",
                  event_loop="asyncio", sts_timeout=3.0, log_level="debug")
    plan = planned(old, new)
    assert set(plan.restart_only) == {"host", "hop_limit", "admin_port", "log_format", "event_loop"}
    assert plan.config.host == "127.0.0.1" and plan.config.hop_limit is None and plan.config.admin_port is None
    assert plan.config.log_format == "text" and plan.config.event_loop == "auto"
    assert plan.config.sts_timeout == 3.0 and plan.config.log_level == "debug"  # applied, not refused


def test_region_falls_back_to_the_source_profile_then_us_east_1() -> None:
    old = config(role(ONE, 9001))
    bound, refreshing = running(old)
    plan = plan_reload(old, bound, replace(old, region=None), "ap-south-1", refreshing)
    assert {spec.region for spec in plan.start} == {"ap-south-1"}
    plan = plan_reload(old, bound, replace(old, region=None), None, refreshing)
    assert {spec.region for spec in plan.start} == {"us-east-1"}
