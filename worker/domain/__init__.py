"""The pure core: state machines, rules and decisions.

Nothing here imports faust, aiohttp or aiokafka, and nothing reads a clock: time is
always passed in. Everything is plain data that serialises with orjson.
"""
