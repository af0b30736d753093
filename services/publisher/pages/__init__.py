"""What readers see: article pages, the front page and Atom feeds."""
