DROP PROCEDURE stepwell_commit_rounds(text, jsonb, jsonb);
DROP FUNCTION stepwell_persist_changes(text, jsonb);
