"""The real Python SDKs against tidings: centrifuge-python (over JSON and
Protobuf) subscribes and recovers; cent drives the server API.

Run by scripts/test.sh with TIDINGS_BIN pointing at the tidings binary.
"""

import asyncio
import json
import os
import socket
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import jwt_helper
from cent import (
    AsyncClient,
    BroadcastRequest,
    ChannelsRequest,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    UnsubscribeRequest,
)
from cent.exceptions import CentUnauthorizedError
from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler

BIN = os.environ.get("TIDINGS_BIN", str(Path(__file__).parents[2] / "target/debug/tidings"))
SECRET = "python-clients-test-secret"
API_KEY = "python-clients-test-api-key"
CONFIG = Path(__file__).parent / "tidings.toml"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    def __init__(self, **extra_env):
        self.dir = tempfile.TemporaryDirectory()
        self.port = free_port()
        env = dict(
            os.environ,
            TIDINGS_LISTEN=f"127.0.0.1:{self.port}",
            TIDINGS_DATA_DIR=self.dir.name,
            TIDINGS_LOG_LEVEL="warn",
            TIDINGS_CENTRIFUGO_TOKEN_KEY=SECRET,
            TIDINGS_CENTRIFUGO_API_KEY=API_KEY,
            **extra_env,
        )
        self.proc = subprocess.Popen([BIN, "serve", "--config", str(CONFIG)], env=env, stdout=subprocess.PIPE)
        line = self.proc.stdout.readline().decode()
        assert "listening" in line, line

    def stop(self):
        self.proc.terminate()
        assert self.proc.wait(10) == 0
        self.proc.stdout.close()
        self.dir.cleanup()


class Proxy:
    """Forwards TCP; cut() drops the connections and refuses new ones until resume()."""

    def __init__(self, target):
        self.target = target
        self.open = True
        self.writers = set()

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def handle(self, reader, writer):
        if not self.open:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers.update([writer, up_writer])

        async def pipe(r, w):
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self):
        self.open = False
        for w in list(self.writers):
            w.close()
        self.writers.clear()

    def resume(self):
        self.open = True

    def close(self):
        self.cut()
        self.server.close()


def decode(data):
    """Protobuf clients get payloads as the bytes that were published."""
    return json.loads(data) if isinstance(data, (bytes, bytearray)) else data


def encode(data, protobuf):
    return json.dumps(data).encode() if protobuf else data


class Events(SubscriptionEventHandler):
    def __init__(self):
        self.publications, self.joins, self.leaves, self.subscribed, self.unsubscribed = [], [], [], [], []

    async def on_publication(self, ctx):
        self.publications.append(decode(ctx.pub.data))

    async def on_join(self, ctx):
        self.joins.append(ctx.info.user)

    async def on_leave(self, ctx):
        self.leaves.append(ctx.info.user)

    async def on_subscribed(self, ctx):
        self.subscribed.append(ctx)

    async def on_unsubscribed(self, ctx):
        self.unsubscribed.append(ctx)


class ClientEvents(ClientEventHandler):
    def __init__(self):
        self.disconnected = []

    async def on_disconnected(self, ctx):
        self.disconnected.append(ctx.code)


async def wait_for(predicate, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def token(user):
    return jwt_helper.hs256({"sub": user, "exp": int(time.time()) + 3600, "info": {"name": user}}, SECRET)


class PythonClients(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.hub = Hub()
        self.addCleanup(self.hub.stop)
        self.api = AsyncClient(f"http://127.0.0.1:{self.hub.port}/api", API_KEY)
        self.ws = f"ws://127.0.0.1:{self.hub.port}/connection/websocket"

    async def asyncTearDown(self):
        await self.api.close()

    def client(self, user, url=None, protobuf=False, events=None):
        return Client(url or self.ws, token=token(user), use_protobuf=protobuf, events=events,
                      min_reconnect_delay=0.05, max_reconnect_delay=0.2, proxy=None)

    async def subscribe_publish_presence(self, protobuf, compressed=False):
        channel = f"chat:py-{'protobuf' if protobuf else 'json'}"
        alice = self.client("alice", protobuf=protobuf)
        events = Events()
        sub = alice.new_subscription(channel, events=events, recoverable=True, join_leave=True)
        await alice.connect()
        await sub.subscribe()
        await sub.ready(5)
        agreed = [e.name for e in alice._conn.protocol.extensions]
        self.assertEqual(agreed, ["permessage-deflate"] if compressed else [])
        await self.api.publish(PublishRequest(channel=channel, data={"text": "sent with cent"}))
        await wait_for(lambda: len(events.publications) == 1, "the cent publication")
        self.assertEqual(events.publications[0], {"text": "sent with cent"})

        bob = self.client("bob", protobuf=protobuf)
        bob_sub = bob.new_subscription(channel, events=Events())
        await bob.connect()
        await bob_sub.subscribe()
        await bob_sub.ready(5)
        await wait_for(lambda: "bob" in events.joins, "bob's join")
        presence = await self.api.presence(PresenceRequest(channel=channel))
        self.assertEqual(sorted(c.user for c in presence.presence.values()), ["alice", "bob"])
        stats = await sub.presence_stats()
        self.assertEqual((stats.num_clients, stats.num_users), (2, 2))
        await bob_sub.publish(encode({"text": "from bob"}, protobuf))
        await wait_for(lambda: len(events.publications) == 2, "bob's publication")
        await bob.disconnect()
        await wait_for(lambda: "bob" in events.leaves, "bob's leave")
        history = await sub.history(limit=10)
        self.assertEqual([decode(p.data)["text"] for p in history.publications], ["sent with cent", "from bob"])
        await alice.disconnect()

    async def test_json_subscribe_publish_presence(self):
        await self.subscribe_publish_presence(protobuf=False)

    async def test_protobuf_subscribe_publish_presence(self):
        await self.subscribe_publish_presence(protobuf=True)

    async def test_compressed_connections(self):
        # websockets offers permessage-deflate and compresses what it sends:
        # with the hub agreeing, the whole flow runs compressed both ways.
        hub = Hub(TIDINGS_CENTRIFUGO_WEBSOCKET_COMPRESSION="true")
        self.addCleanup(hub.stop)
        await self.api.close()
        self.api = AsyncClient(f"http://127.0.0.1:{hub.port}/api", API_KEY)
        self.ws = f"ws://127.0.0.1:{hub.port}/connection/websocket"
        await self.subscribe_publish_presence(protobuf=False, compressed=True)
        await self.subscribe_publish_presence(protobuf=True, compressed=True)

    async def recover(self, protobuf):
        channel = "chat:py-recover"
        proxy = Proxy(self.hub.port)
        port = await proxy.start()
        carol = self.client("carol", url=f"ws://127.0.0.1:{port}/connection/websocket", protobuf=protobuf)
        events = Events()
        sub = carol.new_subscription(channel, events=events, recoverable=True)
        await carol.connect()
        await sub.subscribe()
        await sub.ready(5)
        for n in range(1, 4):
            await self.api.publish(PublishRequest(channel=channel, data={"n": n}))
        await wait_for(lambda: len(events.publications) == 3, "live publications")
        proxy.cut()
        for n in range(4, 9):
            await self.api.publish(PublishRequest(channel=channel, data={"n": n}))
        proxy.resume()
        await wait_for(lambda: len(events.subscribed) == 2, "resubscribe")
        await wait_for(lambda: len(events.publications) == 8, "recovered publications")
        self.assertTrue(events.subscribed[1].was_recovering)
        self.assertTrue(events.subscribed[1].recovered)
        self.assertEqual([p["n"] for p in events.publications], list(range(1, 9)))
        await carol.disconnect()
        proxy.close()

    async def test_json_recovery(self):
        await self.recover(protobuf=False)

    async def test_protobuf_recovery(self):
        await self.recover(protobuf=True)

    async def test_server_api_with_cent(self):
        client_events = ClientEvents()
        dave = self.client("dave", events=client_events)
        events = Events()
        sub = dave.new_subscription("chat:api", events=events)
        await dave.connect()
        await sub.subscribe()
        await sub.ready(5)

        result = await self.api.publish(PublishRequest(channel="chat:api", data={"a": 1}, tags={"k": "v"}))
        self.assertEqual(result.offset, 1)
        self.assertTrue(result.epoch)
        broadcast = await self.api.broadcast(BroadcastRequest(channels=["chat:api", "chat:other"], data={"b": 2}))
        self.assertEqual(len(broadcast.responses), 2)
        await wait_for(lambda: len(events.publications) == 2, "publish and broadcast")
        history = await self.api.history(HistoryRequest(channel="chat:api", limit=10))
        self.assertEqual([p.data for p in history.publications], [{"a": 1}, {"b": 2}])
        self.assertEqual(history.publications[0].tags, {"k": "v"})
        reverse = await self.api.history(HistoryRequest(channel="chat:api", limit=1, reverse=True))
        self.assertEqual(reverse.publications[0].data, {"b": 2})
        stats = await self.api.presence_stats(PresenceStatsRequest(channel="chat:api"))
        self.assertEqual(stats.num_clients, 1)
        channels = await self.api.channels(ChannelsRequest(pattern="chat:*"))
        self.assertIn("chat:api", channels.channels)
        info = await self.api.info(InfoRequest())
        self.assertEqual(info.nodes[0].num_clients, 1)
        await self.api.history_remove(HistoryRemoveRequest(channel="chat:api"))
        history = await self.api.history(HistoryRequest(channel="chat:api", limit=10))
        self.assertEqual(history.publications, [])

        await self.api.unsubscribe(UnsubscribeRequest(user="dave", channel="chat:api"))
        await wait_for(lambda: len(events.unsubscribed) == 1, "server-side unsubscribe")
        self.assertEqual(events.unsubscribed[0].code, 2000)
        await self.api.disconnect(DisconnectRequest(user="dave"))
        await wait_for(lambda: client_events.disconnected, "server-side disconnect")
        self.assertEqual(client_events.disconnected[0], 3503)

        wrong = AsyncClient(f"http://127.0.0.1:{self.hub.port}/api", "wrong-key")
        with self.assertRaises(CentUnauthorizedError):
            await wrong.publish(PublishRequest(channel="chat:api", data={}))
        await wrong.close()


if __name__ == "__main__":
    unittest.main()
