"""The collect loop's read-ahead thread: order, errors, and an early stop."""

import threading
import time

import pytest

from sgdd.stages.collect.loop import read_ahead


def test_items_arrive_in_order_and_all_of_them():
    assert list(read_ahead(iter(range(50)), depth=3)) == list(range(50))
    assert list(read_ahead(iter([]))) == []


def test_the_producer_runs_ahead_of_the_consumer():
    made = []

    def items():
        for i in range(3):
            made.append(i)
            yield i

    reader = read_ahead(items(), depth=1)
    assert next(reader) == 0
    deadline = time.monotonic() + 5
    while len(made) < 2 and time.monotonic() < deadline:  # item 1 is produced while 0 is in use
        time.sleep(0.01)
    assert made[:2] == [0, 1]
    assert list(reader) == [1, 2]


def test_an_error_of_the_producer_is_raised_in_the_consumer_after_the_good_items():
    def items():
        yield 1
        raise ValueError("bad record")

    got = []
    with pytest.raises(ValueError, match="bad record"):
        for item in read_ahead(items()):
            got.append(item)
    assert got == [1]


def test_closing_the_consumer_early_stops_the_producer_thread():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    before = {t.ident for t in threading.enumerate()}
    reader = read_ahead(endless(), depth=2)
    assert next(reader) == 0
    reader.close()
    left = [t for t in threading.enumerate() if t.ident not in before and t.name == "sgdd-read-ahead"]
    assert not left


def test_closing_early_after_the_producer_has_finished_does_not_hang():
    reader = read_ahead(iter(range(2)), depth=1)  # item 1 fills the queue; the end waits behind it
    assert next(reader) == 0
    time.sleep(0.2)
    reader.close()  # returns: the producer's last offers give up once the consumer stops
    assert not [t for t in threading.enumerate() if t.name == "sgdd-read-ahead"]
