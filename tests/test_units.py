import pytest

from hdc.units import UnitError, parse_bandwidth, parse_distance, parse_flops, parse_size, parse_time


@pytest.mark.parametrize("text, bytes_per_s", [
    ("400Gbps", 50e9), ("400 Gbps", 50e9), ("1Gbit/s", 125e6), ("100Mbps", 12.5e6),
    ("900GB/s", 900e9), ("1GiB/s", 2**30), ("25.6Tbps", 3.2e12), ("8bps", 1.0),
])
def test_bandwidth(text, bytes_per_s):
    assert parse_bandwidth(text) == pytest.approx(bytes_per_s)


@pytest.mark.parametrize("text, seconds", [("21ms", 0.021), ("5us", 5e-6), ("1.5s", 1.5), ("100ns", 1e-7)])
def test_time(text, seconds):
    assert parse_time(text) == pytest.approx(seconds)


def test_distance_size_flops():
    assert parse_distance("1000km") == 1e6
    assert parse_size("1GiB") == 2**30
    assert parse_size("4MB") == 4_000_000
    assert parse_size("512") == 512
    assert parse_flops("989TFLOPS") == pytest.approx(989e12)


@pytest.mark.parametrize("parser, bad", [
    (parse_bandwidth, "400"), (parse_bandwidth, 400), (parse_bandwidth, "fast"), (parse_bandwidth, "4Gbs"),
    (parse_time, "21"), (parse_time, "21 days"), (parse_size, "1.5B"), (parse_size, "1GB/s"),
    (parse_distance, "10 parsecs"), (parse_time, True), (parse_size, None),
])
def test_bad_units_name_the_allowed_form(parser, bad):
    with pytest.raises(UnitError) as e:
        parser(bad)
    assert repr(bad) in str(e.value) or str(bad) in str(e.value)
