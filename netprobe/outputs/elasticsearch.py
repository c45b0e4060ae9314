"""elasticsearch sink: every record through the Bulk API (POST <url>/_bulk), in batches.

Each record is an `index` action into `<index>-YYYY.MM.DD` (the record's UTC day) and
its JSON form with `@timestamp` in epoch milliseconds. `netprobe pcap --ndjson` prints
the same lines and `--es-url` posts them with `post_bulk`.

Delivery runs on the sink's own thread, never on the sink runner's: write() only
queues the document. A batch goes out when `batch` documents wait or `flush_interval`
has passed. A request that fails as a whole (connection, timeout, HTTP 429 or 5xx)
is retried with exponential backoff; of a partly failed bulk request, the items
answered 429 (or 5xx) are retried and the others (e.g. 400, a mapping conflict) are
dropped. A document is dropped after `retries` failed attempts, when `pending` is
full (the oldest goes), or when it is still queued at shutdown after `timeout`;
drops are counted in `dropped`, which the daemon reports in its DROPS records.
"""
import base64
import collections
import json
import logging
import threading
import time
from dataclasses import dataclass

from netprobe.config.schema import DURATION, INT, STR, setting
from netprobe.errors import NetprobeError
from netprobe.outputs import SinkConfig
from netprobe.outputs.base import Sink
from netprobe.outputs.httpauth import check_pair, read_password
from netprobe.units import show

log = logging.getLogger("netprobe.outputs")

FIRST_BACKOFF, MAX_BACKOFF = 0.5, 30.0
_INDEX_BAD = set('\\/*?"<>| ,#:')


def bulk_lines(recs, index_prefix):
    """(action line, document line) per record, without newlines.

    An index maps each field to one type: a yes/no SLA's value and threshold (clock_sync=no)
    become 0/1 like every other SLA's numbers, with the yes/no kept in <field>_text."""
    out = []
    for r in recs:
        doc = r.to_dict()
        for key in ("value", "threshold"):
            if isinstance(doc.get(key), bool):
                doc[key + "_text"] = "yes" if doc[key] else "no"
                doc[key] = float(doc[key])
        doc["@timestamp"] = int(round(r.ts * 1000))
        day = time.strftime("%Y.%m.%d", time.gmtime(r.ts))
        out.append((json.dumps({"index": {"_index": f"{index_prefix}-{day}"}}, separators=(",", ":")),
                    json.dumps(doc, separators=(",", ":"), default=str)))
    return out


def bulk_body(recs, index_prefix):
    """The NDJSON body of a _bulk request: an action line, then the document, per record."""
    return "".join(f"{a}\n{d}\n" for a, d in bulk_lines(recs, index_prefix))


def _request(url, body, timeout, auth=None):
    """POST an NDJSON body; the parsed answer. urllib errors pass through."""
    import urllib.request  # here: every worker imports this module's config
    headers = {"Content-Type": "application/x-ndjson"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def post_bulk(url, recs, index_prefix, timeout=10.0):
    """One _bulk request of `recs` to the full endpoint `url`; NetprobeError on any failure
    (HTTP error, unreachable, not JSON, or an answer with errors=true)."""
    import urllib.error
    try:
        answer = _request(url, bulk_body(recs, index_prefix).encode(), timeout)
    except urllib.error.HTTPError as exc:
        raise NetprobeError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise NetprobeError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    except ValueError:
        raise NetprobeError(f"{url}: the answer is not JSON") from None
    if not isinstance(answer, dict) or answer.get("errors"):
        raise NetprobeError(f"{url}: the bulk request was accepted with item errors")


def _retryable(status):
    return status == 429 or status >= 500


def classify(answer, batch):
    """A bulk answer against the batch it answers: (entries to retry, [(status, error text)] refused).
    Retried: items answered 429 or 5xx, or without a status. refused is None when the answer
    does not have one item per document (then the whole batch is retried)."""
    items = answer.get("items") if isinstance(answer, dict) else None
    if not isinstance(items, list) or len(items) != len(batch):
        return batch, None
    retry, refused = [], []
    for item, entry in zip(items, batch, strict=True):
        result = next(iter(item.values()), None) if isinstance(item, dict) and len(item) == 1 else None
        status = result.get("status") if isinstance(result, dict) else None
        if not isinstance(status, int) or isinstance(status, bool) or _retryable(status):
            retry.append(entry)
        elif not 200 <= status < 300:
            refused.append((status, str(result.get("error"))[:200]))
    return retry, refused


@dataclass(frozen=True)
class ElasticsearchConfig(SinkConfig):
    """[output.elasticsearch]: records as documents through the Bulk API."""
    url: str = setting(STR, "http://127.0.0.1:9200", "base URL of Elasticsearch or OpenSearch (/_bulk is added)")
    index: str = setting(STR, "netprobe", "index prefix; documents go to <index>-YYYY.MM.DD (UTC)")
    basic_auth_user: str = setting(STR, "", "HTTP basic auth user (with basic_auth_password_file)")
    basic_auth_password_file: str = setting(STR, "", "file holding the basic auth password (its first line)")
    batch: int = setting(INT, 500, "documents per bulk request at most", min=1, max=100_000)
    flush_interval: float = setting(DURATION, 5.0, "send a partial batch after this long (s)", min=0.01, max=3600)
    timeout: float = setting(DURATION, 10.0, "HTTP timeout of one request (s)", min=0.1, max=300)
    retries: int = setting(INT, 5, "attempts of a document before it is dropped", min=1, max=100)
    pending: int = setting(INT, 100_000, "documents waiting for delivery; beyond, the oldest is dropped",
                           min=10, max=10_000_000)

    def check(self, where):
        super().check(where)
        parts = self.url.split("/")
        if not self.url.startswith(("http://", "https://")) or len(parts) < 3 or not parts[2]:
            raise where.error("url", f"{show(self.url)} is not an http:// or https:// URL "
                                     "(example: http://127.0.0.1:9200)")
        if not self.index or self.index != self.index.lower() or self.index[0] in "-_+" \
                or set(self.index) & _INDEX_BAD:
            raise where.error("index", f"{show(self.index)} is not an index name (lowercase, not starting "
                                       'with - _ +, none of \\ / * ? " < > | , # : or space)')
        check_pair(self, where, "basic_auth_user", "basic_auth_password_file")


class ElasticsearchSink(Sink):
    def __init__(self, cfg, name="elasticsearch"):
        self.cfg = cfg
        self.name = name
        self.endpoint = cfg.url.rstrip("/") + "/_bulk"
        self.dropped = 0              # documents lost (read by the daemon for DROPS)
        self.indexed = 0              # documents Elasticsearch accepted
        self.queue = collections.deque()      # [action, document, attempts]
        self.cond = threading.Condition()
        self.stopping = False
        self.deadline = 0.0            # set by close(): what is still queued then is dropped
        self.auth = None
        self.thread = threading.Thread(target=self._loop, name=f"sink-{name}-bulk", daemon=True)
        self._logged = set()

    def start(self, run_info):
        if self.cfg.basic_auth_user:
            self.auth = f"{self.cfg.basic_auth_user}:{read_password(self.cfg.basic_auth_password_file, self.name)}"
        self.thread.start()

    def write(self, record):
        ((action, doc),) = bulk_lines([record], self.cfg.index)
        with self.cond:
            if len(self.queue) >= self.cfg.pending:
                self.queue.popleft()
                self.dropped += 1
            self.queue.append([action, doc, 0])
            if len(self.queue) >= self.cfg.batch:
                self.cond.notify()

    def close(self):
        """Send what is queued (within one timeout), then count the rest as dropped."""
        with self.cond:
            self.stopping = True
            self.deadline = time.monotonic() + self.cfg.timeout
            self.cond.notify()
        if self.thread.is_alive():
            self.thread.join(2 * self.cfg.timeout + 1)

    def _loop(self):
        backoff = 0.0
        while True:
            with self.cond:
                due = time.monotonic() + (backoff or self.cfg.flush_interval)
                while True:
                    now = time.monotonic()
                    if self.stopping:              # no batching now; a backoff still waits, up to the deadline
                        due = min(due, self.deadline) if backoff else now
                    if now >= due or (not backoff and len(self.queue) >= self.cfg.batch):
                        break
                    self.cond.wait(due - now)
                if self.stopping and (not self.queue or time.monotonic() >= self.deadline):
                    self.dropped += len(self.queue)
                    self.queue.clear()
                    return
                batch = [self.queue.popleft() for _ in range(min(self.cfg.batch, len(self.queue)))]
            if not batch:
                continue
            indexed = self.indexed
            retry = self._send(batch)
            with self.cond:
                for item in reversed(retry):
                    item[2] += 1
                    if item[2] >= self.cfg.retries:
                        self.dropped += 1
                    else:
                        self.queue.appendleft(item)
            if not retry:
                backoff = 0.0
            elif self.indexed > indexed:      # some went in: the cluster is working, retry the rest soon
                backoff = FIRST_BACKOFF
            else:
                backoff = min(MAX_BACKOFF, backoff * 2 or FIRST_BACKOFF)

    def _send(self, batch):
        """Post one batch; the items to try again (all of them if the request failed as a whole)."""
        import urllib.error
        body = "".join(f"{a}\n{d}\n" for a, d, _ in batch).encode()
        try:
            answer = _request(self.endpoint, body, self.cfg.timeout, self.auth)
        except urllib.error.HTTPError as exc:
            if _retryable(exc.code):
                self._once("http", exc.code, f"HTTP {exc.code}; retrying with backoff")
                return batch
            self._once("http", exc.code, f"HTTP {exc.code} {exc.reason}; {len(batch)} documents dropped")
            with self.cond:
                self.dropped += len(batch)
            return []
        except (OSError, ValueError) as exc:         # unreachable, timeout, reset, an answer not JSON
            self._once("error", type(exc).__name__, f"{exc}; retrying with backoff")
            return batch
        retry, refused = classify(answer, batch)
        if refused is None:
            self._once("answer", "", "a bulk answer without one item per document; retrying the batch")
            return batch
        for status, error in refused:
            self._once("item", status, f"documents refused with status {status} ({error}); dropped")
        with self.cond:
            self.dropped += len(refused)
            self.indexed += len(batch) - len(retry) - len(refused)
        return retry

    def _once(self, *key_and_message):
        *key, message = key_and_message
        if tuple(key) not in self._logged:
            self._logged.add(tuple(key))
            log.warning("sink %s: POST %s: %s (logged once)", self.name, self.endpoint, message)
