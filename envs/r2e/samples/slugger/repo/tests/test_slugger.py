from slugger import slugify


def test_simple_title():
    assert slugify("Hello World") == "hello-world"


def test_punctuation_is_dropped():
    assert slugify("Hello, World!") == "hello-world"


def test_runs_of_spaces_become_one_dash():
    assert slugify("  Many   spaces here ") == "many-spaces-here"
