"""The fixed part of every prompt: the agent's system prompt and, for a voice call of a concise agent, the
platform's instruction for spoken replies.

It depends on the agent version and the kind of call only, never on the turn, so it is the same first message
in every completion of a call (and of every call of the agent): the LLM server's prompt cache keeps matching it
and only what follows (``CallHistory.prompt``: supervisor notes, summary, window, the turn's knowledge) is
evaluated again. Nothing per turn (time, caller, retrieved text) may ever be added here.
"""

from __future__ import annotations

from voice_schemas import AgentConfig

VOICE_INSTRUCTION = (
    "You are speaking on a phone call and everything you write is read aloud. Answer in one to three short "
    "sentences, in plain spoken words: no lists, no markdown, no emoji, no URLs. Say numbers, dates and times "
    "as a person would. After a tool result, tell the caller what it means in one short spoken sentence."
)


def system_prompt(agent: AgentConfig, text_only: bool = False) -> str:
    """The agent's fixed system prompt for this kind of call."""
    if agent.llm.concise and not text_only:
        return f"{agent.system_prompt.rstrip()}\n\n{VOICE_INSTRUCTION}"
    return agent.system_prompt
