// the page script (to be written)
