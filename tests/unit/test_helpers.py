from tests.helpers import murmur2_partition


def test_murmur2_matches_the_java_client() -> None:
    # Values from Kafka's own UtilsTest.testMurmur2 (Java), as toPositive(h) % 2**31.
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for key, java_hash in cases.items():
        assert murmur2_partition(key, 2**31 - 1) == (java_hash & 0x7FFFFFFF) % (2**31 - 1)
