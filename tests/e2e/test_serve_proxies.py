"""`ehr serve` behind a proxy: uvicorn must leave the peer address alone for the app's trust check."""

from __future__ import annotations

import httpx

from .test_serve import Server, _env


def test_served_app_sees_the_real_peer_not_x_forwarded_for(database_url: str):
    # uvicorn's own proxy handling would replace the loopback peer by 10.9.9.9 (untrusted),
    # and the forwarded host would then be ignored
    server = Server(_env(EHR_DATABASE_URL=database_url))
    try:
        server.wait_ready()
        forwarded = {"X-Forwarded-For": "10.9.9.9", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "ehr.example.org"}
        # the token is asked for through the same proxy, so its audience is https://ehr.example.org/fhir
        auth = (server.env["EHR_ADMIN_CLIENT_ID"], server.env["EHR_ADMIN_CLIENT_SECRET"])
        issued = httpx.post(
            f"http://127.0.0.1:{server.port}/oauth/token",
            data={"grant_type": "client_credentials", "scope": "system/*.*"},
            auth=auth,
            headers=forwarded,
        )
        assert issued.status_code == 200, issued.text
        headers = {
            **forwarded,
            "Authorization": f"Bearer {issued.json()['access_token']}",
            "Content-Type": "application/fhir+json",
        }
        res = httpx.post(f"{server.base}/Basic", json={"resourceType": "Basic", "code": {"text": "p"}}, headers=headers)
        assert res.status_code == 201, res.text
        assert res.headers["location"].startswith("https://ehr.example.org/fhir/Basic/")
    finally:
        assert server.stop() == 0
