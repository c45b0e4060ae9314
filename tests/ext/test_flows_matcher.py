"""filters.Matcher (the probe's filter applied to the kernel's unfiltered destroy messages) against
the kernel's own bytecode run on the same filter: on random port lists and prefixes over IPv4, IPv6
and v4-mapped sockets, the records it keeps from an unfiltered dump are the ones the kernel returns
for the compiled filter. Sockets other processes open or close meanwhile are left out."""
from hypothesis import example, given, settings
from hypothesis import strategies as st

from netprobe.probes.flows import filters
from tests.ext.test_nldiag_filter import _dump, _key, prefixes, ranges, sockets  # noqa: F401 (fixture)


@settings(max_examples=60, deadline=None)
@given(sport=ranges, dport=ranges, src=prefixes, dst=prefixes, either=ranges, data=st.data())
@example(sport=[], dport=[], src=["::ffff:0:0/96"], dst=[], either=[], data=None)
@example(sport=[], dport=[], src=["127.0.0.0/8"], dst=["::1/128", "0.0.0.0/0"], either=[], data=None)
def test_matcher_keeps_what_the_kernel_filter_returns(sockets, sport, dport, src, dst, either, data):  # noqa: F811
    if data is not None:            # bias the port lists towards the ports our sockets really use
        sport = sport + [(p, p) for p in data.draw(st.lists(st.sampled_from(sockets), max_size=3))]
        dport = dport + [(p, p) for p in data.draw(st.lists(st.sampled_from(sockets), max_size=3))]
        if data.draw(st.booleans()):
            sport, dport = [], []
        either = either + [(p, p) for p in data.draw(st.lists(st.sampled_from(sockets), max_size=3))]
    args = {"sport": sport, "dport": dport, "src": src, "dst": dst, "either_port": either}
    before, _ = _dump()
    kernel, _ = _dump(filters.compile_filter(**args))
    after, _ = _dump()
    stable = {_key(r) for r in before} & {_key(r) for r in after}
    kept = before[filters.Matcher(**args)(before)]
    assert {_key(r) for r in kept} & stable == {_key(r) for r in kernel} & stable
