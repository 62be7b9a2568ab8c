"""A consumer's acks, sent together when its deliveries finish together.

conversation_service finishes a whole write batch at once, and an ack each was a frame, a socket
write and a quorum-queue settle each, in the consumer and in RabbitMQ. The acks asked for in one
turn of the event loop go out together instead: one `multiple` ack for the run of finished
deliveries that starts at the oldest delivery still unsettled on its channel, and a single ack for
each of the others.

A multiple ack settles every delivery of the channel up to its tag, whoever holds it. So `Acks`
must see every delivery of its channel (the consumer must be the channel's only one), and hears of
each one settled another way (a nack, a reject) only once that has been sent: until then, and for a
delivery whose handler was cancelled (left unacked for the broker to hand out again), no multiple
ack reaches past it.
"""

import asyncio
from dataclasses import dataclass

import aiormq.abc
from aio_pika.abc import AbstractIncomingMessage


@dataclass(frozen=True)
class Delivery:
    """One message as the channel it came on numbers it: tags restart on a channel opened again."""

    channel: aiormq.abc.AbstractChannel
    tag: int


class Acks:
    def __init__(self) -> None:
        # Per channel, its deliveries not yet settled, in the order they came (their tags rise).
        self._unsettled: dict[aiormq.abc.AbstractChannel, dict[int, None]] = {}
        # Per channel, the acks asked for in this turn of the loop, each with its caller's future.
        self._due: dict[aiormq.abc.AbstractChannel, dict[int, asyncio.Future[None]]] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._flush_scheduled = False

    def received(self, message: AbstractIncomingMessage) -> Delivery:
        """Note a delivery as it arrives, before anything is awaited on its behalf."""
        assert message.delivery_tag is not None, "a delivery of a consumer that acks"
        delivery = Delivery(message.channel, message.delivery_tag)
        if delivery.channel not in self._unsettled:
            # A channel opened again: what its closed predecessor left unsettled went back to the queue.
            for closed in [channel for channel in self._unsettled if channel.is_closed]:
                del self._unsettled[closed]
            self._unsettled[delivery.channel] = {}
        self._unsettled[delivery.channel][delivery.tag] = None
        return delivery

    def settled(self, delivery: Delivery) -> None:
        """The delivery was nacked or rejected, and that sent: acks may now reach past it."""
        self._forget(delivery.channel, delivery.tag)

    async def ack(self, delivery: Delivery) -> None:
        """Ack the delivery, together with the others acked in this turn; returns once it is sent."""
        loop = asyncio.get_running_loop()
        sent = loop.create_future()
        self._due.setdefault(delivery.channel, {})[delivery.tag] = sent
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        await sent

    def _flush(self) -> None:
        self._flush_scheduled = False
        due, self._due = self._due, {}
        for channel, acks in due.items():
            task = asyncio.create_task(self._send(channel, acks))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, channel: aiormq.abc.AbstractChannel, acks: dict[int, asyncio.Future[None]]) -> None:
        unsettled = self._unsettled.get(channel, {})
        run: list[int] = []
        for tag in unsettled:
            if tag not in acks:
                break
            run.append(tag)
        # A delivery acked already (its handler cancelled as the ack went, then handed back) is not
        # acked again: the broker closes a channel that acks an unknown tag.
        singles = [tag for tag in acks if tag in unsettled and (not run or tag > run[-1])]
        for tag in acks:
            self._forget(channel, tag)
        frames = [channel.basic_ack(tag) for tag in singles]
        if run:
            frames.insert(0, channel.basic_ack(run[-1], multiple=len(run) > 1))
        try:
            await asyncio.gather(*frames)
        except Exception as error:
            # The channel is gone, and with it every delivery it had not settled: back on the queue.
            for sent in acks.values():
                if not sent.done():
                    sent.set_exception(error)
        except BaseException:
            for sent in acks.values():
                sent.cancel()
            raise
        else:
            for sent in acks.values():
                if not sent.done():
                    sent.set_result(None)

    def _forget(self, channel: aiormq.abc.AbstractChannel, tag: int) -> None:
        unsettled = self._unsettled.get(channel)
        if unsettled is None:
            return
        unsettled.pop(tag, None)
        if not unsettled:
            del self._unsettled[channel]
