from filters.normalize import normalize, words


def test_normalize_folds_case_width_punctuation_and_space():
    assert normalize("  Hello,\tWORLD!!  ｆｕｌｌ—width… ") == "hello world full width"
    assert words("Don't   stop") == ["don", "t", "stop"]
    assert normalize("¿¡...!?") == ""
