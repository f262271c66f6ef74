"""Personal data out of traffic (issue 34 item 4): presidio's pattern recognisers, offline, on the forms each
entity takes in real tickets; what is not personal data (order numbers, versions, dates, amounts) is left
alone; JSON stays JSON; the privacy block's keys fail with their name."""

from __future__ import annotations

import json

import pytest

from core.config import PrivacyConfig
from core.privacy import PrivacyError, Scrubber, scrubber_for

# value, entity: each must be replaced by <ENTITY> wherever it stands in a sentence.
PII = {
    "EMAIL_ADDRESS": ["john.doe@example.com", "JANE_SMITH+billing@sub.example.co.uk", "o'brien@mail.example.org",
                      "a.b-c@company-name.io", "user@xn--80ak6aa92e.com", "support.team@example.de"],
    "PHONE_NUMBER": ["+1 (415) 555-2671", "415-555-2671", "(415) 555 2671", "+1-800-555-0199", "+44 20 7946 0958",
                     "020 7946 0958", "+49 30 901820", "+33 1 42 68 53 00", "+91 98765 43210", "+61 2 9374 4000",
                     "+81 3-1234-5678"],
    # Luhn-valid numbers of several networks and groupings.
    "CREDIT_CARD": ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "5500005555555559",
                    "378282246310005", "6011000990139424", "4242 4242 4242 4242"],
    "IBAN_CODE": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "GB82 WEST 1234 5698 7654 32",
                  "FR14 2004 1010 0505 0001 3M02 606", "NL91ABNA0417164300", "ES91 2100 0418 4502 0005 1332",
                  "IT60 X054 2811 1010 0000 0123 456", "BE68 5390 0754 7034", "CH93 0076 2011 6238 5295 7",
                  "AT61 1904 3002 3457 3201", "PL61 1090 1014 0000 0712 1981 2874"],
    "IP_ADDRESS": ["192.168.1.20", "10.0.0.1", "8.8.8.8", "2001:db8::ff00:42:8329", "fe80::1ff:fe23:4567:890a",
                   "2001:0db8:85a3:0000:0000:8a2e:0370:7334"],
}
CASES = [(entity, value) for entity, values in PII.items() for value in values]

# Look like PII to a naive pattern, fail the recogniser's own check: they stay.
NOT_PII = ["4111 1111 1111 1112",  # Luhn fails
           "1234 5678 9012 3456",  # Luhn fails
           "DE89 3704 0044 0532 0130 01",  # IBAN checksum fails
           "999.1.1.1"]  # not an IPv4 address

# Ordinary ticket text: nothing in it may change.
ORDINARY = [
    "Order #123456 was charged $49.99 twice on 2024-05-01",
    "After upgrading to version 2.3.1 the app crashes at 10:45",
    "Invoice INV-2024-00042 for 3 seats, total €1,234.56",
    "Ticket 98765 reopened; build 1.12.0-rc3, PO 4500012345",
    "My account id is 87654321 and I paid 120 USD on 12/03/2025",
    "Error code 0x80070005 at line 1234 of main.py:88",
    "Tracking number 1Z999AA10123456784 says delivered on Nov 3",
    "SKU 5901234123457 is out of stock, ratio 16:9 and port 8080:80",
    "The dark mode toggle resets itself whenever I reopen the desktop client",
]


@pytest.fixture(scope="module")
def scrub() -> Scrubber:
    return scrubber_for(PrivacyConfig())


@pytest.mark.parametrize("entity,value", CASES, ids=[f"{e}:{v}" for e, v in CASES])
def test_each_form_of_each_entity_becomes_its_placeholder(scrub, entity, value):
    for text in (f"Hi, reach me at {value} thanks", f"{value}", f"please use {value}."):
        out = scrub.text(text)
        assert value not in out and f"<{entity}>" in out, (text, out)


@pytest.mark.parametrize("value", NOT_PII)
def test_numbers_that_fail_the_recognisers_check_stay(scrub, value):
    text = f"reference {value} in the form"
    assert scrub.text(text) == text


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_ticket_text_is_not_mangled(scrub, text):
    assert scrub.text(text) == text


def test_json_values_are_scrubbed_and_stay_valid_json(scrub):
    call = json.dumps({"name": "send_email", "arguments": {"to": "bob@example.com", "body": "call +44 20 7946 0958",
                                                           "n": 3}})
    out = scrub.value(call)
    assert json.loads(out) == {"name": "send_email", "arguments": {"to": "<EMAIL_ADDRESS>",
                                                                   "body": "call <PHONE_NUMBER>", "n": 3}}
    clean = '{"a": "nothing here", "b": 1}'
    assert scrub.value(clean) == clean  # unchanged text is returned as given, not re-serialised


def test_a_row_has_every_text_field_scrubbed_and_the_others_kept(scrub):
    row = {"id": "r@example.com", "request": "card 4111 1111 1111 1111", "answer": "mail x@example.com",
           "slm_answer": "billing", "slm_raw": " ip 10.0.0.1", "reference": "billing", "confidence": 0.5, "version": 1}
    out = scrub.row(row)
    assert out == {**row, "request": "card <CREDIT_CARD>", "answer": "mail <EMAIL_ADDRESS>", "slm_raw": " ip <IP_ADDRESS>"}
    assert row["request"] == "card 4111 1111 1111 1111"  # a copy: the caller's row is untouched


def test_the_entity_list_is_configurable_and_scrub_can_be_off():
    only_mail = scrubber_for(PrivacyConfig(entities=["EMAIL_ADDRESS"]))
    assert only_mail.text("a@example.com 4111 1111 1111 1111") == "<EMAIL_ADDRESS> 4111 1111 1111 1111"
    assert scrubber_for(PrivacyConfig(scrub=False)) is None
    url = scrubber_for(PrivacyConfig(entities=["URL"]))  # another of presidio's pattern recognisers
    assert url.text("see https://internal.example.com/x?id=1 now") == "see <URL> now"


def test_privacy_errors_name_the_key():
    with pytest.raises(PrivacyError, match=r"privacy\.entities: \['PERSON'\] need an NER model; set privacy\.ner_model"):
        Scrubber(PrivacyConfig(entities=["EMAIL_ADDRESS", "PERSON"]))
    with pytest.raises(PrivacyError, match=r"privacy\.entities: no recogniser for \['NOT_AN_ENTITY'\]; known: .*CREDIT_CARD"):
        Scrubber(PrivacyConfig(entities=["NOT_AN_ENTITY"]))
    with pytest.raises(PrivacyError, match=r"privacy\.entities: \['email_address'\] are not presidio entity names"):
        Scrubber(PrivacyConfig(entities=["email_address"]))
    with pytest.raises(PrivacyError, match=r"privacy\.ner_model: cannot load spaCy pipeline 'no_such_pipeline'"):
        Scrubber(PrivacyConfig(entities=["PERSON"], ner_model="no_such_pipeline"))


def test_the_skill_file_carries_the_privacy_block(tmp_path):
    from core.config import SkillConfig

    base = {"name": "x", "task": "classification", "instruction": "Route it.", "labels": ["a", "b"]}
    assert SkillConfig.model_validate(base).privacy.scrub is True  # on by default
    cfg = SkillConfig.model_validate({**base, "privacy": {"entities": ["EMAIL_ADDRESS"]}})
    assert cfg.privacy.entities == ["EMAIL_ADDRESS"]
    with pytest.raises(ValueError, match="privacy.scrubs"):
        SkillConfig.model_validate({**base, "privacy": {"scrubs": False}})
