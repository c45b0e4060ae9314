"""A large synthetic mesh (1,000 hosts, 10,000 exclusive tests) for the timetable test and
the mesh bench."""


def big_mesh(n_hosts=1000, n_tests=10_000, one_table=False):
    hosts = [{"name": f"h{i}", "address": f"10.{i // 250}.{i % 250}.1",
              "tags": {"site": f"s{i % 50}", "rack": f"r{i % 500}"}} for i in range(n_hosts)]
    pairs = []
    for k in range(n_tests):
        a = k % n_hosts
        pairs.append((f"h{a}", f"h{(a + 1 + (k // n_hosts) * 37) % n_hosts}", "1h" if k % 2 else "2h"))
    common = {"kind": "throughput", "rate": "100M", "duration": "10s", "exclusive_by": ["host", "rack"]}
    if one_table:
        tests = [{**common, "every": every, "pairs": [[a, b] for a, b, e in pairs if e == every]}
                 for every in ("1h", "2h")]
    else:
        tests = [{**common, "every": e, "pairs": [[a, b]]} for a, b, e in pairs]
    return {"host": hosts, "test": tests}
