"""The load clients end a stream the peer closed, rather than wait on it.

The capacity check, the bench and the soak hold hundreds of these; one that
read a closed socket for ever would hang them past every timeout, since a
read at end of file returns without giving the event loop a turn.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from harness.clients.load_clients import StreamFailed, Transport, load_stream

Ending = Callable[[asyncio.StreamWriter, WSConnection], Awaitable[None]]


async def cut(writer: asyncio.StreamWriter, connection: WSConnection) -> None:
    writer.transport.abort()  # as a proxy that is killed does


async def close_frame(writer: asyncio.StreamWriter, connection: WSConnection) -> None:
    writer.write(connection.send(CloseConnection(code=1001)))  # as a reloading Caddy does
    await writer.drain()
    writer.close()


async def serve_one_frame_then(ending: Ending, transport: Transport) -> str:
    """Serves one event on a stream, ends it as `ending` does; the client's error."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if transport == "sse":
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
                b'id: 1\nevent: text_delta\ndata: {"n": 1}\n\n'
            )
            await writer.drain()
            writer.transport.abort()
            return
        connection = WSConnection(ConnectionType.SERVER)
        while not any(isinstance(e, Request) for e in connection.events()):
            connection.receive_data(await reader.read(65536))
        frame = json.dumps({"event": "text_delta", "id": "1", "data": {"n": 1}})
        writer.write(connection.send(AcceptConnection()) + connection.send(TextMessage(frame)))
        await writer.drain()
        await ending(writer, connection)

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stream = load_stream(transport)
    try:
        async with server:
            await stream.open("127.0.0.1", port, None, "/api/events")
            assert (await stream.next_frame()).data == '{"n": 1}'
            with pytest.raises(StreamFailed) as failed:
                await asyncio.wait_for(stream.next_frame(), 10)
            return str(failed.value)
    finally:
        await stream.close()


@pytest.mark.parametrize("ending", [cut, close_frame])
def test_a_socket_the_peer_ends_fails_its_stream(ending: Ending) -> None:
    error = asyncio.run(serve_one_frame_then(ending, "websocket"))
    assert "the socket closed" in error


def test_an_sse_response_the_peer_ends_fails_its_stream() -> None:
    assert asyncio.run(serve_one_frame_then(cut, "sse")) == "the stream ended"
