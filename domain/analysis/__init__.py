"""AI analysis of chat sessions: the validated result schema, the prompt, costs, and the providers.

The contract shared by session-processing (direct and enqueue) and batch-processing (OpenAI Batch API):

* :mod:`.schema` - :class:`SessionAnalysis`, the one shape every provider's output must pass;
* :mod:`.prompt` - transcripts loaded from the database and the chat-completions request body;
* :mod:`.costs` - token usage, prices in effect at a time, cost in USD and EUR;
* :mod:`.apply` - writing an analysis (and its questions) back to a session, idempotently;
* :mod:`.requests` - the ``ai_processing_requests`` cost record;
* :mod:`.local` - the offline, deterministic default provider; :mod:`.openai_direct` - the OpenAI provider.
"""
