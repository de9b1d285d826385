import pytest

from worker import settings
from worker.settings import SettingsError


def test_defaults_follow_the_contract():
    s = settings.load({})
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.clock == "wall"
    assert s.topics.orders == "orders.events"
    assert s.topics.dispatch("email") == "notifications.dispatch.email"


def test_environment_overrides_defaults():
    s = settings.load({"NOTIFIER_KAFKA_BOOTSTRAP": "k1:9092,k2:9092", "NOTIFIER_CLOCK": "event",
                       "NOTIFIER_WEB_PORT": "7000", "NOTIFIER_TOPIC_ORDERS": "shop.orders",
                       "NOTIFIER_SMTP_STARTTLS": "yes"})
    assert s.kafka_servers == ["k1:9092", "k2:9092"]
    assert s.event_clock and s.web_port == 7000 and s.smtp_starttls
    assert s.topics.orders == "shop.orders"


def test_a_file_adds_settings_and_the_environment_wins(tmp_path):
    env_file = tmp_path / "notifier.env"
    env_file.write_text("# local\nNOTIFIER_CLOCK=event\nNOTIFIER_WEB_PORT=7001\n")
    s = settings.load({"NOTIFIER_ENV_FILE": str(env_file), "NOTIFIER_WEB_PORT": "7002"})
    assert s.clock == "event" and s.web_port == 7002


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("NOTIFIER_CLOCK", "lunar", "expected one of wall, event"),
        ("NOTIFIER_WEB_PORT", "http", "expected a whole number"),
        ("NOTIFIER_WEB_PORT", "70000", "expected a port"),
        ("NOTIFIER_SMS_URL", "twilio", "expected an http(s):// URL"),
        ("NOTIFIER_KAFKA_BOOTSTRAP", "localhost", "expected host:port"),
        ("NOTIFIER_WEBHOOK_SECRET", "hunter2", "whsec_"),
        ("NOTIFIER_SMTP_STARTTLS", "maybe", "expected true or false"),
        ("NOTIFIER_RULES", "/nowhere/rules.toml", "no such file"),
        ("NOTIFIER_TOPIC_ORDERS", " ", "is empty"),
        ("NOTIFIER_ROCKSDB_MEMORY_MB", "8", "expected 16 or more"),
    ],
)
def test_bad_values_name_the_variable_and_what_is_allowed(name, value, says):
    with pytest.raises(SettingsError) as caught:
        settings.load({name: value})
    message = str(caught.value)
    assert name in message and says in message and "\n" not in message


def test_env_names_cover_every_setting():
    names = settings.env_names()
    assert "NOTIFIER_KAFKA_BOOTSTRAP" in names and "NOTIFIER_TOPIC_DLQ" in names
    assert "NOTIFIER_OUTBOX" in names and "NOTIFIER_WEBHOOK_SECRET" in names
