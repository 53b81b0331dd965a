"""What the CRM is told about each kind of call (pure: worker/plan.py, worker/policy.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from crm_client.types import Credentials
from telephony.records import CallRecord
from worker.plan import CallPlan, Skip, format_duration, plan_call, render
from worker.policy import CallPolicy, CrmTarget, WorkerConfig

SERVICE = Credentials("bridge", "s3cret")
IVAN = Credentials("ivan", "ivan-pw")
CRM = CrmTarget("http://crm.test/rest", SERVICE.login, SERVICE.password, agents={"101": IVAN})
T0 = 1_764_158_400.0  # 2025-11-26 12:00:00 UTC


def call(**kw: object) -> CallRecord:
    base: dict[str, object] = dict(
        call_id="1764158400.17",
        direction="in",
        external="+79161234567",
        did="+74951234567",
        extension="101",
        answered=True,
        started_at=T0,
        answered_at=T0 + 6,
        ended_at=T0 + 240,
        disposition="answered",
    )
    base.update(kw)
    return CallRecord(**base)  # type: ignore[arg-type]


def planned(
    record: CallRecord,
    policy: CallPolicy | None = None,
    crm: CrmTarget = CRM,
    sources: dict[str, str] | None = None,
) -> CallPlan:
    plan = plan_call(record, policy or CallPolicy(), crm, sources or {})
    assert isinstance(plan, CallPlan), plan
    return plan


def test_answered_inbound_call_is_logged_with_duration_extension_and_source() -> None:
    plan = planned(call(), sources={"+74951234567": "Yandex Direct"})
    assert plan.subject == "Входящий звонок"
    assert plan.description == (
        "Длительность 3:54; добавочный 101; номер +74951234567 (Yandex Direct)"
    )
    assert plan.phone == "+79161234567"


def test_a_call_that_ended_in_a_gap_says_its_talk_is_a_lower_bound_and_why() -> None:
    """Issue 15: the event text must not claim a precision the bridge does not have."""
    plan = planned(call(ended_at=T0 + 19, flags=("reconciled", "gap")))
    assert plan.description == (
        "Длительность ≥0:13 (разрыв связи с АТС); добавочный 101; номер +74951234567"
    )


def test_a_call_found_answered_after_a_restart_says_its_talk_is_an_upper_bound() -> None:
    record = call(flags=("adopted", "ring-unknown"))
    assert record.ring_s is None
    plan = planned(record, CallPolicy(description="{duration}|{ring}"))
    assert plan.description == "≤3:54 (разговор начался до перезапуска моста)|"


def test_a_call_whose_times_came_from_the_cdr_reads_as_exact() -> None:
    assert planned(call(source="cdr")).description.startswith("Длительность 3:54;")


def test_missed_call_has_its_own_subject_and_no_duration() -> None:
    plan = planned(call(extension=None, answered=False, answered_at=None, disposition="no-answer"))
    assert plan.subject == "Пропущенный звонок"
    assert plan.description == "номер +74951234567"  # no duration, no agent, no source label


def test_outbound_call_uses_the_outbound_subject_and_never_creates_by_default() -> None:
    plan = planned(call(direction="out", did=None))
    assert plan.subject == "Исходящий звонок"
    assert plan.create is None
    assert plan.description == "Длительность 3:54; добавочный 101"


def test_inbound_call_from_an_unknown_number_may_create_a_contact_with_the_did_as_source() -> None:
    crm = CrmTarget("http://crm.test/rest", "bridge", "s3cret", phone_format="national")
    plan = planned(call(), crm=crm)
    assert plan.create is not None
    assert plan.create.x_pstn == "84951234567"
    assert plan.phone == "89161234567"
    assert plan.create.name == "Новый контакт 89161234567"
    assert plan.create.typecont == "contact"


def test_the_agents_own_credentials_are_used_when_configured_else_the_service_account() -> None:
    assert planned(call(extension="101")).credentials == IVAN
    assert planned(call(extension="102")).credentials == SERVICE
    missed = call(extension=None, answered=False, answered_at=None, disposition="no-answer")
    assert planned(missed).credentials == SERVICE


def test_lookups_use_the_service_account_and_a_login_is_named_with_whose_it_is() -> None:
    ivans = planned(call(extension="101"))
    assert ivans.lookup == SERVICE and ivans.agent == "101"
    assert ivans.whose(IVAN) == 'login "ivan" (agent 101\'s own)'
    assert ivans.whose(SERVICE) == 'login "bridge" (the service account)'
    assert planned(call(extension="102")).whose(SERVICE) == 'login "bridge" (the service account)'


@pytest.mark.parametrize(
    ("record", "policy", "reason"),
    [
        (
            call(extension=None, answered=False, answered_at=None, disposition="no-answer"),
            CallPolicy(log_missed=False),
            "missed",
        ),
        (
            call(direction="out", did=None, answered=False, answered_at=None, disposition="busy"),
            CallPolicy(log_unanswered_outbound=False),
            "unanswered outbound",
        ),
        (call(direction="internal", external=None, did=None), CallPolicy(), "internal"),
        (call(external=None), CallPolicy(), "no outside number"),
        (
            call(direction="internal", external=None, did=None),
            CallPolicy(log_internal=True),
            "no other extension",
        ),
    ],
)
def test_calls_the_policy_leaves_out_are_skipped_with_the_reason(
    record: CallRecord, policy: CallPolicy, reason: str
) -> None:
    plan = plan_call(record, policy, CRM)
    assert isinstance(plan, Skip)
    assert reason in plan.reason


def test_unanswered_outbound_and_missed_calls_are_logged_by_default() -> None:
    busy_out = call(direction="out", did=None, answered=False, answered_at=None, disposition="busy")
    assert isinstance(plan_call(busy_out, CallPolicy(), CRM), CallPlan)
    missed = call(extension=None, answered=False, answered_at=None, disposition="no-answer")
    assert isinstance(plan_call(missed, CallPolicy(), CRM), CallPlan)


def test_a_recording_url_is_appended_when_configured() -> None:
    policy = CallPolicy(recording_url="https://pbx.test/rec/{call_id}.wav")
    plan = planned(call(), policy)
    assert plan.description.endswith("; запись https://pbx.test/rec/1764158400.17.wav")


def test_templates_with_unknown_placeholders_are_refused_at_configuration() -> None:
    with pytest.raises(ValidationError) as err:
        CallPolicy(description="Длительность {durration}")
    (problem,) = err.value.errors()
    assert problem["loc"] == ("description",)
    assert "unknown placeholder {durration}" in problem["msg"]
    with pytest.raises(ValidationError) as err:
        CallPolicy(create_contacts_for=("inbound",))
    assert err.value.errors()[0]["loc"][0] == "create_contacts_for"


def test_render_drops_parts_and_groups_whose_values_are_all_empty() -> None:
    values = {"a": "1", "b": "", "c": ""}
    assert render("A {a}; B {b}; literal", values) == "A 1; literal"
    assert render("A {a} ({b})", values) == "A 1"
    assert render("A {a} ({a})", values) == "A 1 (1)"
    assert render("{b}; {c}", values) == ""


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00"), (5.4, "0:05"), (234, "3:54"), (3723, "1:02:03")]
)
def test_durations_read_as_minutes_and_seconds(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_worker_config_refuses_a_job_timeout_shorter_than_a_crm_request() -> None:
    with pytest.raises(ValueError, match="job_timeout_s"):
        WorkerConfig(
            crm=CrmTarget("http://x/rest", SERVICE.login, SERVICE.password, timeout_s=30),
            calls=CallPolicy(job_timeout_s=30),
        )


def test_worker_config_round_trips_through_json() -> None:
    config = WorkerConfig(
        crm=CRM,
        crm_by_pbx={"office": CrmTarget("http://other/rest", "b", "p", phone_format="digits")},
        calls=CallPolicy(create_contacts_for=("in", "out"), job_timeout_s=12),
        sources={"+74951234567": "Яндекс"},
    )
    again = WorkerConfig.from_json(__import__("json").loads(config.dumps()))
    assert again == config
    assert again.crm_for("office").phone_format == "digits"
    assert again.crm_for("elsewhere") == CRM


def internal_call(**kw: object) -> CallRecord:
    """101 called 102, who answered: the record of a call between extensions."""
    base: dict[str, object] = dict(
        direction="internal",
        external=None,
        did=None,
        extension="101",
        rang=("102",),
        final_extension="102",
    )
    return call(**(base | kw))


def test_logged_internal_call_goes_on_the_other_extensions_contact_by_the_caller() -> None:
    plan = planned(internal_call(), CallPolicy(log_internal=True))
    assert (plan.phone, plan.credentials, plan.subject) == ("102", IVAN, "Внутренний звонок")
    assert plan.description == "Длительность 3:54; добавочный 101"
    assert plan.create is None  # create_contacts_for is ["in"] by default


def test_unanswered_internal_call_goes_on_the_contact_of_the_extension_that_rang() -> None:
    plan = planned(
        internal_call(
            answered=False,
            answered_at=None,
            final_extension=None,
            disposition="no-answer",
            rang=("102", "103"),
        ),
        CallPolicy(log_internal=True),
    )
    assert plan.phone == "102"


def test_internal_calls_create_the_other_extensions_contact_only_when_asked() -> None:
    policy = CallPolicy(
        log_internal=True, create_contacts_for=("in", "internal"), contact_name="Сотрудник {phone}"
    )
    plan = planned(internal_call(), policy)
    assert plan.create is not None
    assert (plan.create.name, plan.create.x_pstn) == ("Сотрудник 102", "")
