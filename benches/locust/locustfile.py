"""The original service's load test, re-created with Locust (PyPI `locust`).

Each simulated user is the admin of its own organization: on start it creates the
organization and logs in; then, with 1-3 s between tasks, it reads its organization, reads and
writes documents, changes its admin email now and then, and sometimes logs in again. Run with
`benches/locust/run` (1,000 users spawned at 50/s for 90 s by default) against a gateway whose
per-organization rate limits are the defaults (a user makes well under 100 requests a minute).

Targets of the original service: P95 < 400 ms and P99 < 800 ms overall, error rate < 0.1%,
create < 500 ms, login < 200 ms, get < 100 ms.
"""

import urllib.parse
import uuid

from locust import FastHttpUser, between, task


# FastHttpUser (geventhttpclient) rather than HttpUser (requests): the same requests for a
# fraction of Locust's own CPU, which on a shared 2-core machine otherwise shows up as latency
# in every figure (HttpUser took a whole core at 1,000 users and added ~50 ms at P95).
class OrgAdmin(FastHttpUser):
    wait_time = between(1, 3)

    def on_start(self):
        suffix = uuid.uuid4().hex[:12]
        self.org = f"load {suffix}"
        self.email = f"admin-{suffix}@example.com"
        self.password = f"load-password-{suffix}"
        self.token = None
        self.docs = 0
        with self.client.post(
            "/org/create",
            json={"organization_name": self.org, "email": self.email, "password": self.password},
            name="create",
            catch_response=True,
        ) as r:
            if r.status_code != 201:
                r.failure(f"create: {r.status_code}")
                return
        self.login()

    def login(self):
        with self.client.post(
            "/admin/login",
            json={"email": self.email, "password": self.password},
            name="login",
            catch_response=True,
        ) as r:
            if r.status_code == 200:
                self.token = r.json()["access_token"]
            else:
                r.failure(f"login: {r.status_code}")

    def auth(self):
        return {"authorization": f"Bearer {self.token}"}

    @task(5)
    def get_org(self):
        if self.token:
            self.client.get(
                "/org/get?organization_name=" + urllib.parse.quote(self.org),
                headers=self.auth(),
                name="get",
            )

    @task(4)
    def read_data(self):
        if self.token:
            self.client.post(
                "/data/query", json={"filter": {}, "limit": 10}, headers=self.auth(),
                name="data read",
            )

    @task(3)
    def write_data(self):
        if self.token:
            self.docs += 1
            self.client.post(
                "/data", json={"sku": f"S-{self.docs}", "qty": self.docs}, headers=self.auth(),
                name="data write",
            )

    @task(1)
    def update_email(self):
        if self.token:
            self.email = f"admin-{uuid.uuid4().hex[:12]}@example.com"
            self.client.put(
                "/org/update", json={"organization_name": self.org, "email": self.email},
                headers=self.auth(), name="update",
            )

    @task(1)
    def relogin(self):
        if self.token:
            self.login()
