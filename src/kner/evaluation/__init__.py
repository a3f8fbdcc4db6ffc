"""Evaluation stage: strict entity scores, character views, error causes (``scoring``) and the
side-by-side comparison report (``report``, rendered by ``render_markdown``, ``render_html``, ``chart``;
``headline`` the console summary)."""
