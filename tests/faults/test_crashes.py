from __future__ import annotations
import time, psycopg
from tests import jobs_app
from tests.helpers import eventually

def test_probe(jobs_url, start_worker):
    sup = start_worker(jobs_url, "--processes", "3", "--concurrency", "4", "--heartbeat-interval", "0.5", "--lease-timeout", "3", "--poll-interval", "0.5")
    with psycopg.connect(jobs_url, autocommit=True) as db:
        eventually(lambda: db.execute("select count(*) from pgjobs.workers").fetchone()[0] == 3, 20)
        t = time.monotonic()
        for i in range(20):
            jobs_app.app.enqueue_many(jobs_app.sleepy.call(0, "c") for _ in range(1000))
        print("enqueue", time.monotonic() - t)
        t = time.monotonic()
        last = 0
        while True:
            n = db.execute("select count(*) from pgjobs.jobs where state='completed'").fetchone()[0]
            print(round(time.monotonic()-t,1), n, n-last); last = n
            if n == 20000: break
            time.sleep(2)
        print(sup.output()[-3000:])
