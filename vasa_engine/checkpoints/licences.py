"""The licences of the public checkpoints, as recorded in converted weights and shown before a download.

`COMMERCIAL_USE`: whether each licence allows commercial use (True), forbids it (False) or is unknown (None).
"""

from __future__ import annotations

LIVEPORTRAIT_LICENCE = "MIT (KwaiVGI/LivePortrait)"
JOYVASA_LICENCE = "MIT (jdh-algo/JoyVASA)"
HUBERT_LICENCE = "MIT (TencentGameMate/chinese-hubert-base)"
INSIGHTFACE_LICENCE = "insightface pretrained models: non-commercial research use only"

COMMERCIAL_USE: dict[str, bool | None] = {
    LIVEPORTRAIT_LICENCE: True,
    JOYVASA_LICENCE: True,
    HUBERT_LICENCE: True,
    INSIGHTFACE_LICENCE: False,
}
