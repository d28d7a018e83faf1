"""The chat-session analytics pipeline: tables, formats, analysis providers and the OpenAI batch flow.

Nothing here imports the scheduling layer (``services``, ``manager``, ``runner``); services stay thin
wrappers that call into this package.
"""
