"""Steps that shape results into the formats trainers read (SFT, DPO, conversations)."""

from synthpipe.steps.formatting.conversation import ConversationTemplate
from synthpipe.steps.formatting.dpo import FormatChatGenerationDPO, FormatTextGenerationDPO
from synthpipe.steps.formatting.sft import FormatChatGenerationSFT, FormatTextGenerationSFT

__all__ = ["ConversationTemplate", "FormatChatGenerationDPO", "FormatChatGenerationSFT",
           "FormatTextGenerationDPO", "FormatTextGenerationSFT"]
